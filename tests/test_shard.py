"""Sharded runs (harness/shard.py): torchrun processes over gloo on CPU give a one-process run's
records, resume after a killed rank re-measures only what is missing, and merge refuses
inconsistent shards."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import shard
from harness.cli import main
from harness.records import load_records, record_key

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["run", "--profile", "tiny", "--durations", "500ms,1s", "--samples-per-duration", "2", "--max-new-tokens", "6",
        "--alphas", "0.5", "--warmup", "0", "--no-progress", "--device", "cpu"]
# Rank 1's records come in this order: stages of its 2 samples (4), then per sample target_only,
# sequential, parallel at real and simulated alpha, assisted (5): after 9 its first sample is done.
KILL_AFTER = 9
# Fields that are clock readings, or counts that depend on them (how many hidden tokens fit in the
# measured overlap window, hence how many are drafted and verified). Everything else must match.
TIMING = {"run_id", "t_wall", "stages_ms", "decode_token_ms", "e2e_ms", "ttft_ms", "tpot_ms",
          "window_ms", "ideal_e2e_ms", "timeline", "hidden_block", "hidden_drafted", "hidden_accepted",
          "drafted", "accepted", "verify_steps", "accept_per_position", "accept_blocks", "peak_mem_bytes"}
WHERE = {"rank", "host", "devices", "shard_attempt"}   # what a sharded record adds: where it ran


def torchrun(nproc: int, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "-m", "harness", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def by_key(path: Path) -> dict:
    records = load_records(path)
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)), f"{path} holds a key twice"
    return dict(zip(keys, records))


def assert_same_records(merged: dict, single: dict) -> None:
    assert merged.keys() == single.keys()
    for key, rec in merged.items():
        ref = single[key]
        assert set(rec) - WHERE == set(ref), key
        assert {f: rec[f] for f in ref if f not in TIMING} == {f: ref[f] for f in ref if f not in TIMING}, key


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(ARGS + ["--out", str(out)]) == 0
    return by_key(out / "records.jsonl")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    proc = torchrun(2, ARGS + ["--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_two_processes_write_the_records_of_one(single, two_ranks):
    """torchrun --nproc_per_node 2: the merged records.jsonl equals a one-process run key by key
    (timings aside), each sample's engine runs in the same order (rotated by its position in the
    run, not in a rank's share); each record names its rank, host and devices, each rank measured
    its share only, and the report lists the host and its ranks."""
    out, proc = two_ranks
    merged = by_key(out / "records.jsonl")
    assert_same_records(merged, single)
    orders = {k: r["timeline"]["order"] for k, r in merged.items() if "order" in (r.get("timeline") or {})}
    assert len(orders) >= 8 and orders == {k: single[k]["timeline"]["order"] for k in orders}
    plan = json.loads(next((out / "shards").glob("*/plan.json")).read_text())
    assert len(plan["shares"]) == 2 and all(plan["shares"])
    for key, rec in merged.items():
        assert f"{rec['dataset']}/{rec['sample_id']}" in plan["shares"][rec["rank"]]
        assert rec["devices"] == {"target": "cpu", "drafter": "cpu"} and rec["host"]
    report = (out / "report.md").read_text()
    host = next(iter(merged.values()))["host"]
    assert f"**Host {host}:** ranks 0, 1" in report and "**Processes:** 2" in report
    assert "nothing missing" in proc.stdout


@pytest.mark.slow
def test_resume_after_a_killed_rank_remeasures_only_what_is_missing(single, tmp_path):
    """Rank 1 dies (SIGKILL) once its first sample is complete: the launch fails, every record written so far is
    kept, and the summary prints the resume command. That command with one process instead of two
    re-splits only the samples still missing: the merged run equals a one-process run, holds the
    killed rank's records unchanged, and no key twice."""
    out = tmp_path / "run"
    first = torchrun(2, ARGS + ["--out", str(out)], env={"PPBENCH_TEST_KILL": f"1:{KILL_AFTER}"})
    assert first.returncode != 0
    killed = load_records(next((out / "shards").glob("a001-*/rank-00001.jsonl")))
    assert len(killed) == KILL_AFTER
    line = next(l for l in first.stderr.splitlines() if l.startswith("resume with: "))
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[:3] == ["torchrun", "--nproc_per_node", "2"] and command[-1] == "--resume"
    done_before, _ = shard.collect(out)
    plan1 = json.loads(next((out / "shards").glob("a001-*/plan.json")).read_text())

    second = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                             *command[3:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    merged = by_key(out / "records.jsonl")
    assert_same_records(merged, single)
    for rec in killed:
        assert merged[record_key(rec)] == rec
    for key, rec in done_before.items():
        assert merged[key] == rec
    plan2 = json.loads(next((out / "shards").glob("a002-n1/plan.json")).read_text())
    _, missing_samples = shard.missing_keys(out, plan1, done_before)
    assert plan2["shares"] == [[s for s in plan1["order"] if s in missing_samples]]
    assert 0 < len(missing_samples) < len(plan1["order"])


@pytest.mark.slow
def test_a_failing_rank_loses_nothing_of_the_others(tmp_path):
    """Rank 1's measuring raises after its first record: rank 0 still measures its whole share,
    merges both ranks' records and writes the report; the run exits 3 naming the failed rank, what
    is missing and the resume command."""
    out = tmp_path / "run"
    args = ["run", "--profile", "tiny", "--durations", "500ms", "--samples-per-duration", "2", "--max-new-tokens", "4",
            "--warmup", "0", "--engine", "off", "--no-progress", "--device", "cpu", "--out", str(out)]
    proc = torchrun(2, args, env={"PPBENCH_TEST_RAISE": "1:1"})
    assert proc.returncode != 0
    assert "rank 1 on " in proc.stderr and "failed: RuntimeError: PPBENCH_TEST_RAISE" in proc.stderr
    assert "missing: 1 records" in proc.stderr and "resume with: torchrun" in proc.stderr
    merged = by_key(out / "records.jsonl")
    assert [r["rank"] for r in merged.values()].count(0) == 2 and len(merged) == 3
    assert (out / "report.md").exists()


def _copy(two_ranks, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(two_ranks[0], out)
    return out


def _edit(path: Path, fn) -> None:
    records = load_records(path)
    fn(records)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _refused(out: Path, match: str, capsys) -> None:
    before = (out / "records.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    assert match in capsys.readouterr().err
    assert (out / "records.jsonl").read_bytes() == before, "a refused merge rewrote records.jsonl"


def _shard(out: Path, rank: int) -> Path:
    return next((out / "shards").glob(f"*/rank-{rank:05d}.jsonl"))


@pytest.mark.slow
def test_merge_refuses_inconsistent_shards(two_ranks, tmp_path, capsys):
    """`ppbench merge` re-merges a consistent run; it refuses, without touching records.jsonl, a key
    measured twice differently, a record in another rank's file, a sample outside the rank's
    planned share, a shard file shorter than its rank wrote, and records of other run settings."""
    out = _copy(two_ranks, tmp_path / "ok")
    assert main(["merge", str(out)]) == 0

    out = _copy(two_ranks, tmp_path / "twice")
    _edit(_shard(out, 1), lambda rs: rs[0].update(output_tokens=[0]))
    _refused(out, "measured twice, differently", capsys)

    out = _copy(two_ranks, tmp_path / "moved")
    moved = load_records(_shard(out, 0))[0]
    _edit(_shard(out, 1), lambda rs: rs.append(moved))
    _refused(out, "holds a record of rank 0", capsys)

    out = _copy(two_ranks, tmp_path / "share")
    _edit(_shard(out, 1), lambda rs: rs.append({**moved, "rank": 1}))
    _refused(out, "gave to another rank", capsys)

    out = _copy(two_ranks, tmp_path / "short")
    _edit(_shard(out, 0), lambda rs: rs.pop())
    _refused(out, "but its rank wrote", capsys)

    out = _copy(two_ranks, tmp_path / "settings")
    _edit(_shard(out, 1), lambda rs: [r.update(quant="nf4") for r in rs])
    (out / "records.jsonl").write_text("")
    _refused(out, "holds quant='nf4'", capsys)


def test_split_is_deterministic_balanced_and_complete():
    """Longest-first greedy: every item once, shares in their original order, loads within the
    largest item of each other, the same split for the same input."""
    costs = [5.0, 1.0, 4.0, 4.0, 2.0, 9.0, 3.0, 1.0]
    shares, loads = shard.split(costs, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    assert all(s == sorted(s) for s in shares)
    assert loads == [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs)
    assert shard.split(costs, 3) == (shares, loads)
    assert shard.split(costs, 1)[0] == [list(range(len(costs)))]
    assert shard.split([1.0], 4)[0] == [[0], [], [], []]


def test_costs_follow_the_measured_durations():
    """The default costs are measured per duration; a duration they lack takes the nearest one's;
    the engine part counts only for engine samples."""
    costs = shard.load_costs()
    assert costs["source"].startswith("measured")
    s = shard._Key("20s", "x")
    c = costs["costs_ms"]["20s"]
    assert shard.expected_cost(s, True, costs) == c["stages"] + c["engine"]
    assert shard.expected_cost(s, False, costs) == c["stages"]
    only = {"costs_ms": {"1s": {"stages": 2.0, "engine": 3.0}, "16s": {"stages": 7.0, "engine": 11.0}}}
    assert shard.expected_cost(shard._Key("500ms", "y"), True, only) == 5.0
    assert shard.expected_cost(shard._Key("20s", "y"), False, only) == 7.0


def test_local_ranks_map_to_gpus_or_gpu_pairs():
    """--gpus-per-process 1: local rank r on cuda:r; 2: target cuda:2r, drafter cuda:2r+1; too few
    GPUs, an explicit device shared by several local ranks, or pairs on CPU are refused."""
    m = shard.map_devices
    assert m("auto", None, local_rank=3, local_world_size=4, gpus_per_process=1, n_gpus=8) == ("cuda:3", None)
    assert m("cuda", None, local_rank=3, local_world_size=4, gpus_per_process=2, n_gpus=8) == ("cuda:6", "cuda:7")
    assert m("auto", None, local_rank=1, local_world_size=2, gpus_per_process=1, n_gpus=0) == ("cpu", None)
    assert m("cuda:5", None, local_rank=0, local_world_size=1, gpus_per_process=1, n_gpus=8) == ("cuda:5", None)
    with pytest.raises(shard.ShardError, match="needs cuda:6 and cuda:7 but this host shows 7"):
        m("cuda", None, local_rank=3, local_world_size=4, gpus_per_process=2, n_gpus=7)
    with pytest.raises(shard.ShardError, match="2 processes share this host"):
        m("cuda:0", None, local_rank=0, local_world_size=2, gpus_per_process=1, n_gpus=2)
    with pytest.raises(shard.ShardError, match="needs CUDA GPUs"):
        m("cpu", None, local_rank=0, local_world_size=1, gpus_per_process=2, n_gpus=0)
    with pytest.raises(shard.ShardError, match="--drafter-device cuda:1"):
        m("cuda", "cuda:1", local_rank=0, local_world_size=1, gpus_per_process=2, n_gpus=2)


def test_hosts_section_lists_every_host_rank_and_gpu():
    """The report's machine lines come from every rank's status: hosts, their ranks, each device once."""
    st = [{"rank": r, "host": f"node{r // 2}", "devices": {"target": f"cuda:{2 * (r % 2)}",
                                                           "drafter": f"cuda:{2 * (r % 2) + 1}"},
           "gpus": {f"cuda:{i}": "NVIDIA H200" for i in range(4)}} for r in range(4)]
    hosts = shard.hosts_section(st)
    assert [h["host"] for h in hosts] == ["node0", "node1"]
    assert hosts[1]["ranks"] == [2, 3]
    assert [d["device"] for d in hosts[0]["devices"]] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_a_plain_run_refuses_an_out_dir_holding_shards(tmp_path, capsys):
    """A one-process run over a sharded run's directory would not see the shard files: refused."""
    (tmp_path / "shards" / "a001-n2").mkdir(parents=True)
    (tmp_path / "shards" / "a001-n2" / "rank-00000.jsonl").write_text("{}\n")
    assert main(ARGS + ["--out", str(tmp_path), "--resume"]) == 2
    assert "holds a sharded run" in capsys.readouterr().err


def test_resume_command_repeats_the_launch(monkeypatch):
    """The summary's command relaunches the same way (torchrun or accelerate, processes, nodes) and
    adds --out and --resume; `ppbench run` under a launcher keeps its --no-python form."""
    for k in [k for k in os.environ if k.startswith("ACCELERATE_") or k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")]:
        monkeypatch.delenv(k)
    monkeypatch.setattr(sys, "argv", ["/x/harness/__main__.py", "run", "--durations", "4s"])
    argv = sys.argv[1:]
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    cmd = shard.resume_command(argv, Path("runs/x"))
    assert cmd.startswith("torchrun --nproc_per_node 8 --nnodes 2 --node_rank <this node's rank> "
                          "--master_addr node0 --master_port ")
    assert cmd.endswith("-m harness run --durations 4s --out runs/x --resume")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ppbench", "run", "--out", "o", "--resume"])
    assert shard.resume_command(sys.argv[1:], Path("o")) == \
        "accelerate launch --num_processes 16 --multi_gpu --no_python ppbench run --out o --resume"
