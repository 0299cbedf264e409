"""The `ppbench` command line: subcommands route to the right place and bad input fails clearly."""
from __future__ import annotations

import json

import pytest

from harness.cli import build_parser, main


def test_subcommands_parse():
    p = build_parser()
    args = p.parse_args(["run", "--profile", "7b-shaped", "--durations", "4s", "--alphas", "0,0.7"])
    assert args.profile == "7b-shaped" and args.durations == "4s" and args.alphas == "0,0.7"
    assert p.parse_args(["report", "r.jsonl"]).records == "r.jsonl"
    assert p.parse_args(["dataset", "build", "--root", "x", "--force"]).force


def test_dataset_build_refuses_a_nonempty_root(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        main(["dataset", "build", "--root", str(tmp_path)])


def test_report_on_missing_records_names_the_file(tmp_path):
    with pytest.raises(SystemExit, match="no such records file"):
        main(["report", str(tmp_path / "nope.jsonl")])


def test_compare_routes_to_the_gate(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "no saved benchmark" in capsys.readouterr().err


def test_bounds_derive_needs_engine_results(tmp_path):
    save = tmp_path / "s.json"
    save.write_text(json.dumps({"benchmarks": [], "machine_info": {}}))
    with pytest.raises(SystemExit, match="no parallel-prefill"):
        main(["bounds", "derive", str(save)])


def test_gammas_and_alphas_parse():
    from harness.engine_suite import parse_alphas, parse_gammas

    assert parse_gammas("adaptive, 1,4") == ("adaptive", 1, 4)
    assert parse_alphas("0,0.35") == (0.0, 0.35) and parse_alphas("") == ()
