"""7B-shaped pair in NF4 on the GPU: memory per model and one prefill each (timing shapes only)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from harness.models.profiles import load_drafter, load_target

# cuda: these need a real CUDA device even in CPU smoke mode (--ppbench-device cpu skips them)
pytestmark = [pytest.mark.gpu, pytest.mark.cuda, pytest.mark.slow]
GiB = 1024 ** 3


@pytest.mark.parametrize("which, n_visual", [("drafter", 582), ("target", 2056)])
def test_7b_shaped_nf4_memory_and_prefill(which, n_visual):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    runner = (load_drafter if which == "drafter" else load_target)("7b-shaped", device="cuda", quant="nf4",
                                                                  dtype=torch.bfloat16)
    held = torch.cuda.memory_allocated() - base
    peak_build = torch.cuda.max_memory_allocated() - base
    footprint = runner.memory_footprint()
    print(f"{which}: footprint {footprint / GiB:.2f} GiB, allocated {held / GiB:.2f} GiB, "
          f"build peak {peak_build / GiB:.2f} GiB")
    # NF4 7B (~3.5 GiB) + bf16 embeddings/lm_head (~0.5 GiB) + the drafter's bf16 CLIP-L tower (0.6 GiB;
    # the target's video tower is NF4, as in the seed's load, and its unused image tower is dropped).
    assert 3.5 * GiB < footprint < 6.5 * GiB
    assert held < 7 * GiB
    # built layer by layer: the peak never approaches a bf16 7B copy (13.5 GB)
    assert peak_build < held + 1 * GiB
    assert runner.n_visual_tokens == n_visual
    rng = np.random.default_rng(0)
    raw = ([rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(5)] if which == "drafter"
           else rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8))
    prepared = runner.preprocess(raw, "What is happening in this scene?")
    embeds = runner.encode_vision(prepared)
    assert embeds.shape[1] == prepared["input_ids"].shape[1] - (1 if which == "drafter" else 0) + \
        (n_visual if which == "drafter" else 0)
    cache, logits = runner.prefill(embeds)
    torch.cuda.synchronize()
    assert logits.shape[0] in (32000, 32064) and torch.isfinite(logits).all()
    assert runner.cache_len(cache) == embeds.shape[1]
    logits = runner.decode(int(logits.argmax()), cache)
    assert torch.isfinite(logits).all()
    print(f"{which}: peak with prefill {torch.cuda.max_memory_allocated() / GiB:.2f} GiB")
    del runner, cache


def _greedy(runner, embeds, n):
    cache, logits = runner.prefill(embeds)
    tokens, steps = [int(logits.argmax())], [logits]
    for _ in range(n):
        steps.append(runner.decode(tokens[-1], cache))
        tokens.append(int(steps[-1].argmax()))
    return cache, tokens, torch.stack(steps)


def test_cuda_graph_decode_matches_eager_static_fp32():
    """Replaying captured graphs gives what the same static forward gives eagerly (fp32, tiny pair),
    including padded verify steps, and both agree with transformers' forward; the vision graph, in
    the steps' pool, gives the eager tower's embeddings before and after the steps replay."""
    from harness.models.profiles import configure_decode, load_pair

    runs = {}
    for impl in ("hf", "static", "cuda-graph"):
        pair = load_pair("tiny", device="cuda", quant="none", dtype=torch.float32)
        setup = configure_decode(pair, impl, max_new_tokens=40)
        runs[impl] = pair
        if impl == "cuda-graph":
            for role in ("drafter", "target"):
                assert setup[role]["graph_sizes"][0] == 1 and setup[role]["graph_capture_s"] > 0
                assert setup[role]["prefill_graph_sizes"] and setup[role]["vision_graph_input"]
    rng = np.random.default_rng(0)
    for which in (0, 1):
        r0 = runs["hf"][which]
        raw = ([rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(5)] if which == 0
               else rng.integers(0, 256, (8, 40, 56, 3), dtype=np.uint8))
        prepared = r0.preprocess(raw, "What is happening?")
        embeds = r0.encode_vision(prepared)
        # stage 3 replayed as a graph gives the eager tower's embeddings
        g = runs["cuda-graph"][which]
        assert g.vision_graph is not None and g.vision_graph.matches(next(
            v for k, v in prepared.items() if k.startswith("pixel")))
        torch.testing.assert_close(g.encode_vision(prepared), embeds, atol=1e-4, rtol=1e-4)
        # the prompt falls in a captured prefill bucket, so the graphed prefill is what runs below
        assert any(b >= embeds.shape[1] for b in g.static.prefill_graphs)
        out = {impl: _greedy(pair[which], embeds, 20) for impl, pair in runs.items()}
        assert out["cuda-graph"][1] == out["static"][1] == out["hf"][1]
        torch.testing.assert_close(out["cuda-graph"][2], out["static"][2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["cuda-graph"][2][0], out["hf"][2][0], atol=1e-4, rtol=1e-4)
        # a 10-token verify replays the 12-token graph with 2 dummies; then crop and continue
        s = runs["static"][which]
        block = torch.tensor(out["static"][1][-1:] + list(range(20, 29)), device="cuda")
        vg, vs = g.verify(block, out["cuda-graph"][0]), s.verify(block, out["static"][0])
        torch.testing.assert_close(vg, vs, atol=1e-4, rtol=1e-4)
        n = g.cache_len(out["cuda-graph"][0]) - 7
        g.crop(out["cuda-graph"][0], n)
        s.crop(out["static"][0], n)
        torch.testing.assert_close(g.decode(7, out["cuda-graph"][0]), s.decode(7, out["static"][0]),
                                   atol=1e-4, rtol=1e-4)
        # the vision graph shares the decoder's pool: after prefill and step replays it still gives the same
        torch.testing.assert_close(g.encode_vision(prepared), embeds, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_the_clock_waits_for_the_models_own_device():
    """A model on cuda:1 while cuda:0 is current: engine.now_ms(cuda:1) must wait for cuda:1's
    work (the clock of every decode step), so a step's time is its own, not ~0."""
    from harness.engine import now_ms

    x = torch.randn(4096, 4096, device="cuda:1")
    ms = []
    for _ in range(20):
        start = now_ms("cuda:1")
        x = x @ x
        x = x / x.norm()
        ms.append(now_ms("cuda:1") - start)
    assert min(ms) > 0.05


@pytest.mark.parametrize("impl, overlap", [("cuda-graph", "always"), ("hf", "always"), ("cuda-graph", "yield-gpu")])
def test_engine_on_cuda_with_queued_hidden_steps_is_lossless(impl, overlap):
    """The CUDA hidden phase queues draft steps back to back and abandons the ones still running
    when the target is ready. Tiny fp32 pair; the drafter's steps are slowed on the GPU (a spin
    kernel) and the target's loading on the host, so steps get abandoned: the output must still be
    the target's own, the caches consistent after every step (static cache and transformers'
    DynamicCache), and a drafter that always proposes the reference (simulated alpha = 1) fully
    accepted. Under yield-gpu no hidden step may start after the target's host stages ended."""
    from harness.data.synthetic import ensure_default_dataset
    from harness import data
    from harness import baselines as B
    from harness import engine as E
    from harness.models.profiles import configure_decode, load_pair

    from fixtures.engine_testers import Checked, Slow

    drafter, target = load_pair("tiny", device="cuda", quant="none", dtype=torch.float32)
    configure_decode([drafter, target], impl, max_new_tokens=24)
    sample = data.load_samples(ensure_default_dataset(progress=False), "4s")[0]

    class GpuSlowDecode:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def decode(self, token, cache):
            torch.cuda._sleep(20_000_000)          # ~10 ms of GPU time before each draft step
            return self._inner.decode(token, cache)

    ref = B.target_only(target, sample, max_new_tokens=24).output_tokens
    for alpha in (None, 1.0, 0.5):
        checked = Checked(GpuSlowDecode(drafter), Slow(target, load_inputs=80))
        res = E.parallel_prefill_decode(checked, checked.target, sample,
                                        max_new_tokens=24, alpha=alpha, reference_tokens=ref, overlap=overlap)
        checked.after(res)
        assert res.output_tokens == ref and res.overlap == overlap
        assert 2 <= res.hidden_block and res.hidden_drafted <= res.hidden_block
        times = res.timeline["draft_token_ms"][:res.hidden_block]
        assert times == sorted(times) and len(res.costs.hidden_ms) == res.hidden_block - 1
        # stopped by the target, not by the cap: two steps were queued, so some were abandoned
        assert res.hidden_block < 24
        if overlap == "yield-gpu":    # the one step queued before the pause may still finish
            assert times[-1] <= res.timeline["target_stage_end_ms"]["preprocess"] + 20
        if alpha == 1.0:
            assert res.hidden_accepted == res.hidden_drafted and res.accepted == res.drafted


@pytest.mark.parametrize("impl", ["hf", "static", "cuda-graph", "compiled"])
def test_queued_plain_decode_on_cuda_matches_one_step_at_a_time(impl):
    """Plain decode steps queued ahead of the host (the CUDA default) give one-step-at-a-time's
    tokens and cache, stopping at an EOS with the steps queued past it cropped, under every decode
    implementation; and they are queued: a step's host work overlaps earlier steps' GPU work.
    Tiny fp32 target on a real sample."""
    from harness.data.synthetic import ensure_default_dataset
    from harness import data
    from harness import engine as E
    from harness.benchsupport import _gpu_cycles_per_ms
    from harness.models.profiles import configure_decode, load_pair

    _, target = load_pair("tiny", device="cuda", quant="none", dtype=torch.float32)
    configure_decode([target], impl, max_new_tokens=24)
    sample = data.load_samples(ensure_default_dataset(progress=False), "4s")[0]

    def run(depth, n=20, eos=frozenset()):
        cache, logits, _ = E.run_stages_1_to_4(target, sample)
        tokens, times = E.plain_decode(target, cache, int(logits.argmax()), n, eos=set(eos), depth=depth)
        return tokens, times, target.cache_len(cache), target.decode(tokens[-1], cache).float().cpu()

    one = run(0)
    queued = run(E.DECODE_QUEUE)
    assert queued[0] == one[0] and queued[2] == one[2]
    assert torch.allclose(queued[3], one[3], atol=1e-4, rtol=1e-4)
    assert queued[1] == sorted(queued[1])
    stop = one[0][6]
    cut = one[0].index(stop) + 1
    a, b = run(0, eos={stop}), run(E.DECODE_QUEUE, eos={stop})
    assert a[0] == b[0] == one[0][:cut] and a[2] == b[2]
    assert torch.allclose(a[3], b[3], atol=1e-4, rtol=1e-4)

    # Each step: H ms of host work before its launch, then a G ms GPU tail. One round trip per step
    # costs about H + G a step; queued, the host's H runs while the GPU works through earlier
    # steps, so the two overlap (a loop that waits for the queue at every read would not).
    host_ms, gpu_ms = 3.0, 3.0
    cycles = int(gpu_ms * _gpu_cycles_per_ms(target.device))
    inner = target.decode

    def slowed(token, cache):
        end = time.perf_counter() + host_ms / 1e3
        while time.perf_counter() < end:
            pass
        logits = inner(token, cache)
        torch.cuda._sleep(cycles)
        return logits

    target.decode = slowed
    try:
        gap = {d: float(np.median(np.diff(run(d, n=10)[1]))) for d in (0, E.DECODE_QUEUE)}
    finally:
        del target.decode
    assert gap[0] > host_ms + gpu_ms - 0.5, gap
    assert gap[E.DECODE_QUEUE] < gap[0] - 0.5 * min(host_ms, gpu_ms), gap


def test_graphed_vision_runs_other_shapes_eagerly_and_says_so():
    from harness.models.profiles import configure_decode, load_pair

    drafter, _ = load_pair("tiny", device="cuda", quant="none", dtype=torch.float32)
    configure_decode([drafter], "cuda-graph", max_new_tokens=8)
    g = drafter.vision_graph
    other = torch.zeros(g.input.shape[0] + 1, *g.input.shape[1:], device="cuda")
    with pytest.warns(UserWarning, match="runs eagerly"):
        out = g(other)
    torch.testing.assert_close(out, drafter.vision_features(other))
    assert g.eager_calls == 1
    torch.testing.assert_close(g(g.input.clone()), drafter.vision_features(g.input.clone()), atol=1e-5, rtol=1e-5)


def test_with_a_drafter_process_the_drafter_weights_are_on_the_gpu_once(tmp_path):
    """Issue 19: with the drafter in its own process (the default on CUDA) a run holds one copy of
    the drafter's 7B-shaped weights. The parent's allocator holds the target only (its weights;
    decode hf, so no static cache): less than the target plus half the drafter's weights. Where
    NVML lists the child, the child holds at least the drafter's weights."""
    from harness import gpu_memory, options, pipeline, runconfig

    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    raw = options.defaults(device="cuda", profile="7b-shaped", decode="hf", drafter_process="on",
                           samples_per_duration="1", durations="500ms", max_new_tokens="8", out=str(tmp_path / "b"))
    drafter, target = pipeline.open_models(runconfig.resolve(raw, side="pytest"))
    try:
        held = torch.cuda.memory_allocated() - base
        target_bytes, drafter_bytes = target.memory_footprint(), drafter.memory_footprint()
        print(f"parent allocated {held / GiB:.2f} GiB; target weights {target_bytes / GiB:.2f} GiB, "
              f"drafter weights (child) {drafter_bytes / GiB:.2f} GiB")
        assert drafter_bytes > 3 * GiB and held < target_bytes + 0.5 * drafter_bytes
        procs = gpu_memory.used_bytes(target.device)["processes"] or {}
        if drafter._proc.pid in procs:
            assert procs[drafter._proc.pid] >= drafter_bytes
    finally:
        pipeline.close_models(drafter)
