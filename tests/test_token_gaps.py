"""scripts/token_gaps.py reads real engine records: each parallel record is paired with target-only on
the same sample, and its per-token gaps come from the records' token_ms."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from pathlib import Path

from harness import baselines as B
from harness import engine as E
from harness import results as R

from fixtures.engine_testers import random_pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import token_gaps  # noqa: E402

PROMPT = "what is moving in front of the car?"


def test_token_gaps_pairs_each_parallel_record_with_target_only(tmp_path, capsys):
    """Two engine runs and one target-only run of a sample give two rows: the post-TTFT speedup is
    target-only's decode phase over the engine's, and the gaps are the records' token_ms differences."""
    drafter, target = random_pair(0, eos_token_id=None)
    meta = dict(sample_id="s0", dataset="2s", run_id="r")
    recs = [R.to_record(B.target_only(target, PROMPT, max_new_tokens=10), **meta)]
    recs += [R.to_record(E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=10, gamma=g), **meta)
             for g in (0, 2)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = list(token_gaps.rows(path))
    assert len(rows) == 2
    base, par = recs[0], recs[1]
    assert rows[0]["e2e"] == (base["e2e_ms"], par["e2e_ms"])
    assert rows[0]["post_ttft_speedup"] == (base["e2e_ms"] - base["ttft_ms"]) / (par["e2e_ms"] - par["ttft_ms"])
    t = par["timeline"]["token_ms"]
    assert rows[0]["first_gap"][1] == t[1] - t[0]
    token_gaps.main([str(path)])
    assert "post-TTFT speedup" in capsys.readouterr().out


def test_order_effects_group_each_plain_decode_by_the_mode_before_it(tmp_path, capsys):
    """Records of engine_suite carry their position in the sample's sequence; the order effects
    group each plain-decoding run's median gap by the mode that ran just before it (across
    samples too), and leave out parallel runs that verified a block after the hidden one."""
    from harness.engine_suite import engine_records_for

    drafter, target = random_pair(0, eos_token_id=None)
    samples = [SimpleNamespace(dataset="2s", id=f"s{i}", question=PROMPT + " now" * i) for i in range(2)]
    recs = list(engine_records_for(drafter, target, samples, max_new_tokens=8, alphas=(0.0, 0.9),
                                   meta=dict(run_id="r")))
    assert [r["timeline"]["order"] for r in recs] == [0, 1, 2, 3, 4] * 2
    # the second sample's configurations after target-only are rotated by one
    assert [token_gaps.label(r) for r in recs] == [
        "target_only", "sequential", "parallel, real drafter", "parallel, alpha 0.0", "parallel, alpha 0.9",
        "target_only", "parallel, real drafter", "parallel, alpha 0.0", "parallel, alpha 0.9", "sequential"]
    # a parallel run that verified a block after its hidden one is not plain decoding; one that
    # verified only its hidden block is (set here: how many blocks a real-drafter run verifies
    # depends on how many tokens its wall-clock window hid)
    recs[4]["accept_blocks"], recs[8]["accept_blocks"] = [[3, 3], [2, 1]], [[3, 3]]
    recs[2]["accept_blocks"], recs[6]["accept_blocks"] = [[2, 2], [1, 1]], [[2, 2]]
    recs[3]["accept_blocks"] = recs[7]["accept_blocks"] = [[3, 0]]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    effects = token_gaps.order_effects(path)
    assert sum(len(v) for v in effects.values()) == 8      # all but records 2 and 4
    assert len(effects[("parallel, alpha 0.9", "parallel, alpha 0.0")]) == 1 and ("target_only", None) in effects
    assert sorted(str(k[1]) for k in effects if k[0] == "target_only") == ["None", "parallel, alpha 0.9"]
    assert effects[("sequential", "parallel, alpha 0.9")] and effects[("parallel, real drafter", "target_only")]
    token_gaps.main([str(path)])
    assert "order effects" in capsys.readouterr().out
