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


def test_drafter_process_choice():
    """auto (the default) puts the drafter in its own process whenever it runs on CUDA, not on CPU
    and not when a delay is injected into the in-process runners; a bare flag means on."""
    from harness.pipeline import resolve_drafter_process

    p = build_parser()
    assert p.parse_args(["run"]).drafter_process == "auto"
    assert p.parse_args(["run", "--drafter-process"]).drafter_process == "on"
    assert p.parse_args(["run", "--drafter-process", "off"]).drafter_process == "off"
    assert resolve_drafter_process("auto", "cuda:1") and resolve_drafter_process("auto", "cuda")
    assert not resolve_drafter_process("auto", "cpu")
    assert not resolve_drafter_process("auto", "cuda:0", inject_delay="decode:40")
    assert resolve_drafter_process("on", "cpu") and not resolve_drafter_process("off", "cuda:1")
    with pytest.raises(ValueError, match="drafter process must be one of"):
        resolve_drafter_process("sometimes", "cpu")


def test_plugin_choices_are_the_library_constants():
    """plugin.py spells the choices out (loading it must not import torch); they must not drift."""
    from harness import engine, pipeline, plugin

    class Group:
        def __init__(self):
            self.options = {}

        def addoption(self, name, **kw):
            self.options[name] = kw

    group = Group()
    plugin.pytest_addoption(type("Parser", (), {"getgroup": lambda self, *a, **k: group,
                                                "addini": lambda self, *a, **k: None})())
    assert tuple(group.options["--ppbench-overlap"]["choices"]) == engine.OVERLAP_POLICIES
    assert tuple(group.options["--ppbench-drafter-process"]["choices"]) == pipeline.DRAFTER_PROCESS_CHOICES


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


def _fake_run(out, **meta):
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.jsonl").write_text(json.dumps({"kind": "stages"}) + "\n")
    saved = {"run_id": "old", "profile": "tiny", "quant": "none", "dtype": "float32",
             "max_new_tokens": 4, "stop_at_eos": False, **meta}
    (out / "meta.json").write_text(json.dumps(saved))
    return saved


def test_refused_run_leaves_the_existing_run_untouched(tmp_path):
    out = tmp_path / "run"
    saved = _fake_run(out)
    with pytest.raises(SystemExit, match="already holds records"):
        main(["run", "--out", str(out), "--device", "cpu", "--max-new-tokens", "8"])
    assert json.loads((out / "meta.json").read_text()) == saved


def test_resume_with_different_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    with pytest.raises(SystemExit, match="max_new_tokens: saved 4, now 8"):
        main(["run", "--out", str(out), "--device", "cpu", "--max-new-tokens", "8", "--resume"])


def test_run_with_no_samples_fails(tmp_path):
    with pytest.raises(SystemExit, match="no samples to measure"):
        main(["run", "--durations", "3s", "--out", str(tmp_path / "r"), "--device", "cpu",
              "--no-progress"])
