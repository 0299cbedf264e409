"""Decode 'compiled' (models/static_decode.py: the glue between the linears through torch.compile)
and int4 weight-only linears (models/quant.py, torch's tinygemm op), on CPU; the same equality on
the GPU with CUDA graphs is the gpu-marked test at the end. Timing is scripts/precision_probe.py's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bitsandbytes.functional as bnbf
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from harness import baselines as B
from harness import engine as E
from harness.models.base import TextRunner
from harness.models.quant import Int4Linear, int4_linear, quantize_int4, quantize_int4_
from harness.models.profiles import load_target
from harness.models.static_decode import GLUE, FusedGlue, StaticDecoder, fuse_nf4_state

from fixtures import triton_checks
from fixtures.engine_testers import STEP_PLAN, CharTokenizer, steps_through, tiny_llama

QUICK = "aot_eager"      # dynamo + AOT tracing (mutations, views, shapes) without a C++ build
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("attention", ["auto", "sdpa", "math"])
def test_compiled_steps_match_the_eager_static_path(attention):
    """Decode and verify steps of every size, after crops, give the eager static path's logits (fp32)."""
    model = tiny_llama(11)
    ids = torch.randint(3, 90, (1, 40))
    eager = StaticDecoder(model, max_len=64)
    fused = StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK, attention=attention)
    for a, b in zip(steps_through(eager, ids, STEP_PLAN), steps_through(fused, ids, STEP_PLAN)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert fused.glue.error is None and fused.compile_s > 0 and fused._compiled == {1, 4, 9, 2}


def test_fused_projections_store_nothing_twice_and_change_no_weight():
    """The compiled step's q/k/v and gate/up matmuls run over concatenated weights; each module's
    weight becomes a view into them (one storage), with its values unchanged, and the model still
    runs through its own modules (the eager path) with the same logits as without fusion."""
    model = tiny_llama(13)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 90, (1, 40))
    plain = StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK, fuse_projections=False)
    ref = steps_through(plain, ids, STEP_PLAN)
    fused = StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK)
    assert len(fused.fused_linears) == 2 and all(f is not None for pair in fused.fused_linears for f in pair)
    assert not plain.fused_linears and fused.fused_extra_bytes() == 0
    a = model.model.layers[0].self_attn
    assert a.q_proj.weight.untyped_storage().data_ptr() == a.v_proj.weight.untyped_storage().data_ptr()
    assert fused.fused_linears[0][0].sizes == [32, 16, 16]          # GQA: k and v narrower than q
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for a_, b_ in zip(ref, steps_through(fused, ids, STEP_PLAN)):
        torch.testing.assert_close(b_, a_, atol=1e-5, rtol=1e-5)
    for a_, b_ in zip(ref, steps_through(StaticDecoder(model, max_len=64), ids, STEP_PLAN)):
        torch.testing.assert_close(b_, a_, atol=1e-5, rtol=1e-5)
    again = StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK)
    assert again.fused_linears[0][0] is fused.fused_linears[0][0]     # made once per model


def test_int4_projections_are_not_fused_and_still_run():
    """int4 (tinygemm) layers have no concatenated form here: the compiled step calls them one by one."""
    model = tiny_llama(14, hidden=64)
    quantize_int4_(model, ["lm_head"])
    dec = StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK)
    assert all(f is None for pair in dec.fused_linears for f in pair)
    ids = torch.randint(3, 90, (1, 40))
    assert all(torch.isfinite(x).all() for x in steps_through(dec, ids, STEP_PLAN))


def test_nf4_fused_state_dequantizes_to_exactly_each_weight():
    """NF4 q/k/v stacked: the concatenated 4-bit bytes with the float32 absmax dequantize to exactly
    the concatenation of each module's own (double-quantized) weight, and each module, now a view into
    the new bytes and the new absmax (its double-quant absmax freed), still dequantizes to its own
    weight; the extra bytes are the float32 absmax less the states it replaced."""
    target = load_target("tiny", quant="nf4", dtype=torch.float32)
    a = target.model.model.language_model.layers[0].self_attn
    mods = [a.q_proj, a.k_proj, a.v_proj]
    assert all(m.weight.quant_state.nested for m in mods)
    own = [bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state) for m in mods]
    old = sum(m.weight.quant_state.absmax.numel() + 4 * m.weight.quant_state.state2.absmax.numel() for m in mods)
    data, state, extra = fuse_nf4_state(mods)
    assert not state.nested and state.absmax.dtype == torch.float32
    assert extra == 4 * state.absmax.numel() - old > 0
    assert torch.equal(bnbf.dequantize_4bit(data, state), torch.cat(own))
    for m, w in zip(mods, own):
        qs = m.weight.quant_state
        assert m.weight.data.untyped_storage().data_ptr() == data.untyped_storage().data_ptr()
        assert not qs.nested and qs.absmax.untyped_storage().data_ptr() == state.absmax.untyped_storage().data_ptr()
        assert torch.equal(bnbf.dequantize_4bit(m.weight.data, qs), w)
        assert getattr(m, "quant_state", None) in (None, qs)     # no handle left on the freed state


@pytest.mark.slow
def test_compiled_with_inductor_matches_the_eager_static_path():
    """The default backend (inductor: generated C++ on CPU) gives the same logits to fp32 rounding."""
    model = tiny_llama(12)
    ids = torch.randint(3, 90, (1, 20))
    plan = (12, (12, 13), (13, 14))
    eager = StaticDecoder(model, max_len=32)
    fused = StaticDecoder(model, max_len=32, fused=True)
    for a, b in zip(steps_through(eager, ids, plan), steps_through(fused, ids, plan)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert fused.glue.error is None


def test_compile_failure_falls_back_to_eager_with_a_warning():
    """A compiler that fails leaves a working decoder (the eager glue), says why once, and records it."""
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model = tiny_llama(13)
    ids = torch.randint(3, 90, (1, 40))
    fused = StaticDecoder(model, max_len=64, fused=True, compile_backend=broken)
    with pytest.warns(UserWarning, match="torch.compile of the decode step failed.*no compiler here"):
        got = steps_through(fused, ids, STEP_PLAN)
    for a, b in zip(steps_through(StaticDecoder(model, max_len=64), ids, STEP_PLAN), got):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert "no compiler here" in fused.glue.error


def test_runner_reports_compiled_setup_and_the_engine_stays_lossless():
    """use_decode_impl('compiled') on CPU: compiled glue, no graphs, compile time in decode_setup; the
    engine's output on it equals target-only greedy decoding (fp32, bit-exact tokens)."""
    model = tiny_llama(14)
    drafter = TextRunner(tiny_llama(15, layers=1), CharTokenizer(prefix=(1, 5), eos_token_id=None), name="drafter")
    target = TextRunner(model, CharTokenizer(eos_token_id=None), name="target")
    for r in (drafter, target):
        info = r.use_decode_impl("compiled", max_len=256, compile_backend=QUICK)
        assert r.static._compiled == {1, 2, 3}
        assert info["decode_impl"] == "compiled" and "graph_sizes" not in info
        assert info["compile_backend"] == QUICK and "compile_error" not in info
    graphs = counters["stats"]["unique_graphs"]
    for prompt, gamma, alpha in (("abc def", 3, None), ("hello?", "adaptive", 0.7), ("a", 1, 1.0)):
        ref = B.target_only(target, prompt, max_new_tokens=20).output_tokens
        res = E.parallel_prefill_decode(drafter, target, prompt, max_new_tokens=20, gamma=gamma, alpha=alpha,
                                        reference_tokens=ref if alpha is not None else None)
        assert res.output_tokens == ref
    assert info["compile_s"] > 0
    assert counters["stats"]["unique_graphs"] == graphs        # compiled at setup, never in a step


# -- int4 (tinygemm) -------------------------------------------------------------------------------
def _dequant(lin: Int4Linear, q_codes: torch.Tensor) -> torch.Tensor:
    sz = lin.scales_and_zeros.float()                        # (in/group, out, 2)
    scales = sz[..., 0].t().repeat_interleave(lin.group, dim=1)
    zeros = sz[..., 1].t().repeat_interleave(lin.group, dim=1)
    return (q_codes.float() - 8) * scales + zeros


@pytest.mark.parametrize("in_f,out_f", [(64, 96), (256, 32)])
def test_int4_linear_computes_x_times_its_dequantized_weight(in_f, out_f):
    """Int4Linear(x) = x @ dequant(W).T to bf16 rounding, and dequant(W) is within half a step of W."""
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=True)
    with torch.no_grad():
        lin.bias.normal_()
    q = int4_linear(lin)
    assert q.group == min(128, in_f)
    w = lin.weight.detach()
    g = w.reshape(-1, q.group)
    lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    codes = ((g - lo) / ((hi - lo) / 15)).round().clamp(0, 15).reshape_as(w)
    deq = _dequant(q, codes)
    step = ((hi - lo) / 15).repeat_interleave(q.group, dim=1).reshape(out_f, -1)
    assert ((deq - w).abs() <= step.reshape_as(w) * 0.5 + 1e-2 * step.reshape_as(w) + 2e-3).all()
    x = torch.randn(3, 5, in_f)
    ref = x.to(torch.bfloat16).float() @ deq.t() + lin.bias
    torch.testing.assert_close(q(x), ref, atol=0.05 * ref.abs().max().item(), rtol=0.02)
    assert q(x).shape == (3, 5, out_f) and q(x).dtype == x.dtype


def test_quantize_int4_replaces_eligible_linears_and_keeps_the_model_working():
    """Every linear outside skip_modules becomes Int4Linear (lm_head kept), the footprint shrinks,
    and greedy decoding on static and compiled paths agrees (same int4 weights)."""
    model = tiny_llama(16, hidden=64)
    before = model.get_memory_footprint()
    quantize_int4_(model, ["lm_head"])
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(("_proj",))}
    assert kinds == {"Int4Linear"} and isinstance(model.lm_head, nn.Linear)
    assert model.get_memory_footprint() < before
    ids = torch.randint(3, 90, (1, 40))
    eager = StaticDecoder(model, max_len=64)
    fused = StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK)
    for a, b in zip(steps_through(eager, ids, STEP_PLAN), steps_through(fused, ids, STEP_PLAN)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_int4_refuses_widths_tinygemm_cannot_group():
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize_int4(torch.randn(8, 40))


def test_tiny_pair_loads_in_int4_through_the_checkpoint_path():
    """quant='int4' on the real loading path (from_pretrained, then conversion): LM linears are int4,
    vision tower and lm_head stay in the compute dtype, and a prefill + decode runs."""
    from test_models_contract import embeds_of

    target = load_target("tiny", quant="int4", dtype=torch.float32)
    mods = dict(target.model.named_modules())
    assert any(isinstance(m, Int4Linear) for m in mods.values())
    assert not any(isinstance(m, Int4Linear) for n, m in mods.items() if "vision" in n or n.endswith("lm_head"))
    cache, logits = target.prefill(embeds_of(target))
    assert torch.isfinite(target.decode(int(logits.argmax()), cache)).all()


def test_triton_decode_attention_is_masked_sdpa_under_the_interpreter():
    """decode_attention's split-KV kernels, run by Triton's interpreter on CPU, equal masked SDPA
    without reading any slot past the position, and the compiled step attending with them equals the
    eager static path (fixtures/triton_checks.py, in a process of its own: the interpreter is chosen
    when triton is imported)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "fixtures.triton_checks"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert f"decode_attention == masked SDPA in {len(triton_checks.CASES)} cases" in r.stdout
    assert "compiled steps with triton attention == eager static path, 8-slot splits" in r.stdout
    assert "head dim 12: decode keeps SDPA under auto, triton refused" in r.stdout


def test_auto_attention_is_sdpa_where_triton_cannot_run_and_triton_is_refused_there(monkeypatch):
    """Off CUDA (no interpreter) 'auto' decodes with SDPA and verifies with the matmul form; asking
    for 'triton' there is an error that says what it needs, not a silent fallback."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_llama(11)
    assert StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK).glue.kinds() == \
        {"decode": "sdpa", "verify": "math"}
    assert StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK, attention="sdpa").glue.kinds() == \
        {"decode": "sdpa", "verify": "sdpa"}
    with pytest.raises(ValueError, match="attention 'triton' needs CUDA, the triton package"):
        StaticDecoder(model, max_len=64, fused=True, compile_backend=QUICK, attention="triton")


def test_a_failed_decode_step_compile_moves_auto_decode_steps_to_sdpa_and_a_verify_failure_does_not():
    """Under 'auto' a failure in the first call of a decode step (n = 1), which may be the Triton
    kernels', sends decode steps to SDPA; a verify step's failure (n > 1, where the kernels never
    run) leaves decode steps on the kernels a captured graph may already replay. Both switch the
    glue to the eager functions and record the error."""
    glue = FusedGlue(QUICK, "auto")
    glue.triton_ok = True                                    # as on CUDA with triton
    with pytest.warns(UserWarning, match="runs eagerly"):
        glue.fall_back(RuntimeError("verify compile failed"), 9)
    assert glue.kinds()["decode"] == "triton" and "verify compile failed" in glue.error
    assert glue.fns["norm"] is GLUE["norm"]
    with pytest.warns(UserWarning, match="runs eagerly"):
        glue.fall_back(RuntimeError("decode compile failed"), 1)
    assert glue.kinds() == {"decode": "sdpa", "verify": "math"}


# -- GPU --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.cuda
def test_triton_decode_attention_on_the_gpu():
    """On CUDA 'auto' decodes with the split-KV kernels; they equal masked SDPA (fp32, never reading
    a slot past the position), the compiled step's CUDA graphs with them equal the eager static path,
    and one captured graph replayed at many positions equals SDPA at each (7B shapes, bf16)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    dev = torch.device("cuda")
    assert StaticDecoder(tiny_llama(11).cuda(), max_len=64, fused=True).glue.kinds() == \
        {"decode": "triton", "verify": "math"}
    triton_checks.attention_matches_sdpa(dev, atol=1e-4)
    triton_checks.compiled_steps_match(dev, "inductor")
    triton_checks.graph_replays_match(dev)


@pytest.mark.gpu
@pytest.mark.cuda
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_compiled_graphs_match_the_eager_static_path_on_the_gpu(attention):
    """CUDA graphs of the compiled step (inductor) give the eager static path's logits (fp32 tiny model)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = tiny_llama(17).cuda()
    ids = torch.randint(3, 90, (1, 40), device="cuda")
    eager = StaticDecoder(model, max_len=64)
    fused = StaticDecoder(model, max_len=64, graphs=True, fused=True, attention=attention)
    fused.capture_graphs(sizes=(1, 2, 4, 9))
    assert fused.glue.error is None and fused.compile_s > 0 and fused.pool_bytes >= 0
    for a, b in zip(steps_through(eager, ids, STEP_PLAN), steps_through(fused, ids, STEP_PLAN)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.cuda
def test_fused_nf4_projections_give_the_unfused_logits_on_the_gpu():
    """NF4 q/k/v and gate/up as one bitsandbytes matmul each (float32 absmax) give the logits of the
    same step calling the modules one by one (the tiny target's language model, bf16 compute)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    target = load_target("tiny", quant="nf4", device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(3, 90, (1, 40), device="cuda")
    plain = StaticDecoder(target.model, max_len=64, graphs=True, fused=True, fuse_projections=False)
    plain.capture_graphs(sizes=(1, 2, 4, 9))
    ref = steps_through(plain, ids, STEP_PLAN)
    fused = StaticDecoder(target.model, max_len=64, graphs=True, fused=True)
    fused.capture_graphs(sizes=(1, 2, 4, 9))
    assert all(f is not None for pair in fused.fused_linears for f in pair) and fused.fused_extra_bytes() > 0
    for a, b in zip(ref, steps_through(fused, ids, STEP_PLAN)):
        torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


# -- whole-GPU memory -------------------------------------------------------------------------------
def test_peak_sampler_ignores_cpu_devices_and_reports_nothing_there():
    """On CPU there is no device memory to sample: no thread, no peaks, and the report says so."""
    from harness.gpu_memory import PeakSampler

    with PeakSampler(["cpu", torch.device("cpu")]) as s:
        s.__enter__()                       # entering again is harmless
    assert s.devices == [] and s.peaks() == {}


@pytest.mark.parametrize("choice, env, want", [
    ("expandable", {}, "expandable_segments:True"),
    ("default", {}, ""),
    ("expandable", {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}, "max_split_size_mb:64"),
    ("expandable", {"PYTORCH_ALLOC_CONF": "garbage_collection_threshold:0.6"}, "garbage_collection_threshold:0.6"),
])
def test_allocator_choice_reaches_the_environment_unless_the_user_set_one(monkeypatch, choice, env, want):
    """--cuda-alloc sets the allocator for this process and, through the environment, the drafter's;
    an allocator setting already in the environment is the user's: kept, never overridden; off CUDA
    nothing is set."""
    from harness import gpu_memory

    for name in gpu_memory.ALLOC_ENV:       # set, then deleted: monkeypatch restores what was there
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(gpu_memory, "_set_allocator_settings", calls.append)
    assert gpu_memory.configure_allocator(choice, "cpu") is None and not calls
    assert gpu_memory.allocator_setting("cuda", choice) == want          # known before anything is set
    assert gpu_memory.configure_allocator(choice, "cuda:0") == want
    assert gpu_memory.allocator_setting("cuda", choice) == want
    assert calls == ([want] if want == gpu_memory.EXPANDABLE else [])
    after = {n: os.environ[n] for n in gpu_memory.ALLOC_ENV if n in os.environ}
    assert after == (env or ({"PYTORCH_CUDA_ALLOC_CONF": want} if want else {}))


@pytest.mark.gpu
@pytest.mark.cuda
def test_peak_sampler_sees_a_child_process_allocation():
    """NVML counts memory another process holds: a spawned child's 1 GiB allocation shows up in the
    whole-device peak and under the child's pid (torch's counters in this process never see it)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import multiprocessing as mp

    from harness.gpu_memory import PeakSampler, used_bytes

    if used_bytes("cuda:0")["source"] != "nvml":
        pytest.skip("nvidia-ml-py not installed")
    ctx = mp.get_context("spawn")
    held, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_gib, args=(held, done))
    with PeakSampler(["cuda:0"], interval_s=0.02) as s:
        base = used_bytes("cuda:0")["device_used"]
        child.start()
        assert held.wait(120)
        s.sample()
        done.set()
        child.join(60)
    peak = s.peaks()["cuda:0"]
    assert peak["peak_device_used_bytes"] >= base + (1 << 30)
    assert peak["peak_process_bytes"].get(str(child.pid), 0) >= 1 << 30


def _hold_gib(held, done):
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    held.set()
    done.wait(120)
    del x
