"""The `ppbench` command line: subcommands route to the right place and bad input fails clearly."""
from __future__ import annotations

import json

import pytest

from harness.cli import build_parser, main


def assert_user_error(capsys, argv, pattern):
    """A user error: exit 2 and one line on stderr that matches `pattern`, no traceback."""
    import re

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err


def test_subcommands_parse():
    p = build_parser()
    args = p.parse_args(["run", "--profile", "7b-shaped", "--durations", "4s", "--alphas", "0,0.7"])
    assert args.profile == "7b-shaped" and args.durations == "4s" and args.alphas == "0,0.7"
    assert p.parse_args(["report", "r.jsonl"]).records == ["r.jsonl"]
    assert p.parse_args(["report", "a/records.jsonl", "b/records.jsonl"]).records == ["a/records.jsonl", "b/records.jsonl"]
    assert p.parse_args(["dataset", "build", "--root", "x", "--force"]).force


def test_drafter_process_choice():
    """auto (the default) puts the drafter in its own process whenever it runs on CUDA, not on CPU
    and not when a delay is injected into the in-process runners; a bare flag means on."""
    from harness.errors import UsageError
    from harness.runconfig import resolve_drafter_process

    p = build_parser()
    assert p.parse_args(["run"]).drafter_process == "auto"
    assert p.parse_args(["run", "--drafter-process"]).drafter_process == "on"
    assert p.parse_args(["run", "--drafter-process", "off"]).drafter_process == "off"
    assert resolve_drafter_process("auto", "cuda:1") and resolve_drafter_process("auto", "cuda")
    assert not resolve_drafter_process("auto", "cpu")
    assert not resolve_drafter_process("auto", "cuda:0", inject_delay="decode:40")
    assert resolve_drafter_process("on", "cpu") and not resolve_drafter_process("off", "cuda:1")
    with pytest.raises(UsageError, match="drafter process must be one of"):
        resolve_drafter_process("sometimes", "cpu")


def test_cli_and_pytest_options_come_from_one_table():
    """Every run option of the table exists on each side it names, with the same default and
    choices (harness/options.py generates both, so `ppbench run` and the plugin cannot drift)."""
    from harness import options, plugin

    class Group:
        def __init__(self):
            self.options = {}

        def addoption(self, name, **kw):
            self.options[name] = kw

    group = Group()
    plugin.pytest_addoption(type("Parser", (), {"getgroup": lambda self, *a, **k: group})())
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("run"))
    cli = {a.option_strings[0]: a for a in run._actions if a.option_strings and a.option_strings[0] != "-h"}
    for opt in options.OPTIONS:
        if opt.flag("pytest"):
            kw = group.options.pop(opt.flag("pytest"))
            assert kw.get("choices") == (opt.choices if opt.choices else None)
        if opt.flag("cli"):
            action = cli.pop(opt.flag("cli"))
            assert action.default == (False if opt.kwargs.get("action") == "store_true" else opt.default)
    assert not group.options and not cli   # nothing outside the table


def test_dataset_build_refuses_a_nonempty_root(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert_user_error(capsys, ["dataset", "build", "--root", str(tmp_path)], "not empty")


def test_report_on_missing_records_names_the_file(tmp_path, capsys):
    assert_user_error(capsys, ["report", str(tmp_path / "nope.jsonl")], "no such records file")


def test_compare_routes_to_the_gate(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "no saved benchmark" in capsys.readouterr().err


def test_bounds_derive_needs_engine_results(tmp_path, capsys):
    save = tmp_path / "s.json"
    save.write_text(json.dumps({"benchmarks": [], "machine_info": {}}))
    assert_user_error(capsys, ["bounds", "derive", str(save)], "no parallel-prefill")


def test_gammas_and_alphas_parse():
    """Draft lengths are 'adaptive' or integers >= 1; simulated rates lie in [0, 1]."""
    from harness.errors import UsageError
    from harness.runconfig import parse_alphas, parse_gammas

    assert parse_gammas("adaptive, 1,4") == ("adaptive", 1, 4)
    assert parse_alphas("0,0.35") == (0.0, 0.35) and parse_alphas("") == ()
    for bad in ("0", "1,x", ","):
        with pytest.raises(UsageError):
            parse_gammas(bad)
    for bad in ("2", "-0.1", "x"):
        with pytest.raises(UsageError):
            parse_alphas(bad)


def _fake_run(out, **meta):
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.jsonl").write_text(json.dumps({"kind": "stages"}) + "\n")
    saved = {"run_id": "old", "profile": "tiny", "quant": "none", "dtype": "float32",
             "max_new_tokens": 4, "stop_at_eos": False, **meta}
    (out / "meta.json").write_text(json.dumps(saved))
    return saved


def test_refused_run_leaves_the_existing_run_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    saved = _fake_run(out)
    assert_user_error(capsys, ["run", "--profile", "tiny", "--out", str(out), "--device", "cpu", "--max-new-tokens", "8"], "already holds records")
    assert json.loads((out / "meta.json").read_text()) == saved


def test_resume_with_different_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _fake_run(out)
    assert_user_error(capsys, ["run", "--profile", "tiny", "--out", str(out), "--device", "cpu", "--max-new-tokens", "8", "--resume"], "max_new_tokens: saved 4, now 8")


def test_run_with_no_samples_fails(tmp_path, capsys):
    """A dataset root whose manifests hold none of the asked durations is a user error, before any
    model loads, and leaves no run folder behind."""
    (tmp_path / "ds" / "manifests").mkdir(parents=True)
    assert_user_error(capsys, ["run", "--data-root", str(tmp_path / "ds"), "--durations", "4s",
                               "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress"],
                      "no samples to measure")
    assert not (tmp_path / "r").exists()


def _run_folder(path, speedups, *, failed_sample=None):
    """A `ppbench run` folder of hand-made records: one sample per entry of speedups (target-only
    e2e / parallel e2e), plus a simulated-alpha record that must not count."""
    from fixtures.record_factory import engine_record, stage_record

    recs = []
    for i, sp in enumerate(speedups):
        sid = f"s{i}"
        recs += [stage_record("4s", sid, m) for m in ("drafter", "target")]
        recs += [engine_record("4s", sid, "target_only", e2e_ms=100.0 * sp),
                 engine_record("4s", sid, "parallel", e2e_ms=100.0),
                 engine_record("4s", sid, "parallel", e2e_ms=1.0, alpha=0.9)]
    if failed_sample is not None:
        recs.append(engine_record("4s", failed_sample, "parallel", e2e_ms=1.0,
                                  error={"stage": "engine", "type": "OOM", "message": "x"}))
    path.mkdir()
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (path / "meta.json").write_text(json.dumps({"profile": "tiny", "device": "cpu"}))
    return path


def test_bounds_derive_from_run_folders_takes_the_lowest_median(tmp_path):
    """Derived from run folders, each bound's measured value is the lowest of the folders' medians
    (real drafter records only, failed records left out), so every folder passes `bounds check`,
    and a run whose speedup collapsed fails it."""
    a = _run_folder(tmp_path / "a", [1.0, 2.0, 3.0], failed_sample="s9")
    b = _run_folder(tmp_path / "b", [1.5, 1.5, 1.5])
    out = tmp_path / "bounds.json"
    assert main(["bounds", "derive", str(a), str(b), "--device-class", "cpu", "--out", str(out),
                 "--margin", "overall_speedup=0.1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["bounds"]["overall_speedup"]["min"] == pytest.approx(1.5 * 0.9)
    assert main(["bounds", "check", str(out), str(a), str(b / "records.jsonl")]) == 0
    slow = _run_folder(tmp_path / "slow", [0.5, 0.5])
    assert main(["bounds", "check", str(out), str(slow)]) == 1


def test_bounds_derive_refuses_mixed_inputs(tmp_path, capsys):
    a = _run_folder(tmp_path / "a", [1.0])
    save = tmp_path / "s.json"
    save.write_text(json.dumps({"benchmarks": [], "machine_info": {}}))
    assert_user_error(capsys, ["bounds", "derive", str(a), str(save)], "not both")
