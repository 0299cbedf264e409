"""Decode cost per precision and decode implementation (issue 19), on the target's language model.

For each precision (bf16, nf4, int4) it builds the 7B-shaped target and, on the same weights, three
static decoders: eager `static`, `cuda-graph` and `compiled` (models/static_decode.py). Then:

  equality     teacher-forced decode steps and one 9-token verify: logits of cuda-graph and compiled
               vs eager static (max |diff|, argmax agreement)
  curve        ms of a decode/verify step of M tokens after a prompt of --prompt positions, CUDA
               events around each replay (warm-up excluded), per implementation
  linears      the same M through the 32 layers' seven linears alone (one graph), so step / linears
               is the share of a step outside the weights
  floor        bytes a decode step must read (linear weights + K/V of the prompt + lm_head) over the
               device's bandwidth: spec (--hbm-tbs) and a measured device-to-device copy
  break-even   metrics.break_even_alpha from the measured curve (compiled), per hidden block size
  sim alpha    MEASURED target-side decode of --tokens tokens with a hidden block of --block drafts
               (reference token with probability alpha, simulated) verified in one step, vs plain
               decode: the real steps, real greedy acceptance, CUDA events
  memory       weights, static caches, graph pools, torch peak, whole-device use (NVML)

and first the NF4 pair as the engine holds it (drafter + target, compiled decode with every
graph the run captures) with its whole-device memory, then with the drafter again in its own process
(the CUDA default); last, an fp32 check that the compiled path's bf16 differences are rounding.

  python scripts/precision_probe.py --out $OUT                   # on a GPU host (H200: ~5 min)
  python scripts/precision_probe.py --device cpu --profile tiny   # CPU dry run of the same code
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import gpu_memory, metrics  # noqa: E402
from harness.models.profiles import build_shaped, configure_decode, load_pair, load_target, static_cache_len  # noqa: E402
from harness.models.static_decode import StaticDecoder, _rotate_half, capture  # noqa: E402

QUANT_OF = {"bf16": "none", "nf4": "nf4", "int4": "int4"}
CURVE = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24, 32, 48, 64)


def timer(device):
    """ms of fn(), median over reps after warm-up: CUDA events on CUDA, perf_counter on CPU."""
    def run(fn, reps=20, warm=3):
        for _ in range(warm):
            fn()
        if device.type != "cuda":
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)
        torch.cuda.synchronize(device)
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize(device)
        return statistics.median(a.elapsed_time(b) for a, b in ev)
    return run


def _rope(q, k, v, cos, sin, head_dim: int):
    n = q.shape[1]
    q = q.view(1, n, -1, head_dim).transpose(1, 2)
    k = k.view(1, n, -1, head_dim).transpose(1, 2)
    v = v.view(1, n, -1, head_dim).transpose(1, 2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def eager_write_attend(backend):
    """A variant of static_decode.rope_write_attend for comparison: RoPE compiled, the K/V write
    and attention eager (no cache buffer is a compiled graph's input)."""
    rope = torch.compile(_rope, backend=backend)

    def attend(q, k, v, cos, sin, kbuf, vbuf, positions, mask, head_dim, scale, gqa):
        q, k, v = rope(q, k, v, cos, sin, head_dim)
        kbuf.index_copy_(2, positions, k)
        vbuf.index_copy_(2, positions, v)
        o = torch.nn.functional.scaled_dot_product_attention(q, kbuf, vbuf, attn_mask=mask, scale=scale,
                                                             enable_gqa=gqa)
        return o.transpose(1, 2).reshape(1, q.shape[2], -1)
    return attend


def build(profile, precision, device):
    quant = QUANT_OF[precision]
    if profile == "7b-shaped":
        return build_shaped("target", device=device, quant=quant, dtype=torch.bfloat16)
    return load_target(profile, device=device, quant=quant, dtype=torch.bfloat16 if device.type == "cuda"
                       else torch.float32)


def seven_linears(i, layer, xh, xi):
    a, mlp = layer.self_attn, layer.mlp
    a.q_proj(xh), a.k_proj(xh), a.v_proj(xh), a.o_proj(xh)
    mlp.gate_proj(xh), mlp.up_proj(xh), mlp.down_proj(xi)


def linears_fn(dec, m, device, per_layer=seven_linears):
    """The layers' linears alone on an M-row input (per_layer(i, layer, hidden-wide x,
    intermediate-wide x) calls them; by default the seven): one graph's replay on CUDA, else eager."""
    cfg = dec.dec.config
    xh = torch.randn(1, m, cfg.hidden_size, device=device, dtype=dec.dtype) * 0.5
    xi = torch.randn(1, m, cfg.intermediate_size, device=device, dtype=dec.dtype) * 0.5

    def f():
        for i, layer in enumerate(dec.dec.layers):
            per_layer(i, layer, xh, xi)
    if device.type != "cuda":
        return f
    with torch.inference_mode():
        graph, _ = capture(f, device)
    return graph.replay


def linears_ms(dec, m, device, t, per_layer=seven_linears):
    """ms of linears_fn's call (median of the timer's reps; 3 on CPU)."""
    fn = linears_fn(dec, m, device, per_layer)
    return t(fn) if device.type == "cuda" else t(fn, reps=3, warm=1)


def prefill(dec, ids):
    cache = dec.new_cache()
    dec.forward(cache, input_ids=ids)
    return cache


def step_ms(dec, cache, start, ids, m, t, reps):
    def f():
        cache.length = start
        dec.forward(cache, input_ids=ids[:, :m], keep=m)
    return t(f, reps=reps)


def equality(ref, others, prompt_ids, tokens):
    """Teacher-forced steps (the eager static path's greedy tokens fed to every decoder) and one
    9-token verify: max |logit diff| vs eager, relative to the eager logits' std, and argmax agreement."""
    out = {}
    with torch.inference_mode():
        caches = {name: prefill(d, prompt_ids) for name, d in [("static", ref), *others.items()]}
        feed, ref_logits = [], []
        tok = torch.tensor([[int(prompt_ids[0, -1])]], device=prompt_ids.device)
        for _ in range(tokens):
            lg = ref.forward(caches["static"], input_ids=tok)
            ref_logits.append(lg[-1])
            feed.append(tok)
            tok = lg[-1].argmax().reshape(1, 1)
        block = torch.cat([tok] + [tok] * 8, dim=1)
        ref_v = ref.forward(caches["static"], input_ids=block, keep=9)
        for name, d in others.items():
            got = [d.forward(caches[name], input_ids=x)[-1] for x in feed]
            got_v = d.forward(caches[name], input_ids=block, keep=9)
            a, b = torch.stack(ref_logits), torch.stack(got)
            scale = float(a.std())
            out[name] = {"decode_max_abs_diff": float((a - b).abs().max()), "logit_std": scale,
                         "decode_max_rel_diff": float((a - b).abs().max()) / scale,
                         "decode_argmax_match": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                         "verify_max_rel_diff": float((ref_v - got_v).abs().max()) / scale,
                         "verify_argmax_match": float((ref_v.argmax(-1) == got_v.argmax(-1)).float().mean()),
                         "steps": tokens}
    return out


def sim_alpha(dec, prompt_ids, t, *, alphas, block, tokens, seeds, device):
    """MEASURED, simulated alpha: decode `tokens` tokens after the prompt, plainly or with a hidden
    block of `block` drafts (each draft is the reference greedy token with probability alpha,
    else another token) verified in one step with real greedy acceptance; then plain steps to
    `tokens`. GPU time of the decode phase from CUDA events. -> per alpha: mean ms and speedup."""
    def timed(fn):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            a.record()
            out = fn()
            b.record()
            torch.cuda.synchronize(device)
            return out, a.elapsed_time(b)
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3

    V = dec.head.out_features if hasattr(dec.head, "out_features") else dec.head.weight.shape[0]
    with torch.inference_mode():
        cache = dec.new_cache()
        first = int(dec.forward(cache, input_ids=prompt_ids)[-1].argmax())    # token 1, from the prefill
        start = cache.length

        def plain(n_have, tok):
            out = []
            for _ in range(tokens - n_have):
                tok = int(dec.forward(cache, input_ids=torch.tensor([[tok]], device=device))[-1].argmax())
                out.append(tok)
            return out

        def target_only():
            cache.length = start
            return plain(1, first)
        runs = [timed(target_only) for _ in range(seeds)]
        ref, plain_ms = [first] + runs[0][0], statistics.mean(ms for _, ms in runs)
        rows = []
        for alpha in alphas:
            times, acc = [], []
            for seed in range(seeds):
                rng = random.Random(seed)
                drafts = [ref[i] if rng.random() < alpha else (ref[i] + 1) % V for i in range(block)]

                def spec():
                    cache.length = start
                    if drafts[0] != ref[0]:          # d1 checked by the prefill logits: rejected
                        return 0, plain(1, ref[0])
                    lg = dec.forward(cache, input_ids=torch.tensor([drafts], device=device), keep=block)
                    pred = lg.argmax(-1).tolist()
                    n = 0
                    while n + 1 < block and drafts[n + 1] == pred[n]:
                        n += 1
                    out = drafts[1:n + 1] + [pred[n]]
                    cache.length = start + 1 + n + 1
                    have = 1 + len(out)
                    return n, (out + plain(have, out[-1]) if have < tokens else out)
                (n, _), ms = timed(spec)
                times.append(ms)
                acc.append(n)
            rows.append({"alpha_simulated": alpha, "ms": statistics.mean(times), "speedup": plain_ms / statistics.mean(times),
                         "accepted_after_first_mean": statistics.mean(acc)})
        cache.length = start
    return {"block": block, "tokens": tokens, "seeds": seeds, "plain_ms": plain_ms, "rows": rows}


def copy_bandwidth_tbs(device):
    x = torch.empty(2 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms = timer(device)(lambda: y.copy_(x), reps=10)
    del x, y
    return 2 * (2 << 30) / (ms / 1e3) / 1e12


def probe_precision(args, precision, device, t, bandwidth):
    res = {"precision": precision}
    t0 = time.perf_counter()
    runner = build(args.profile, precision, device)
    res["build_s"] = time.perf_counter() - t0
    res["weights_bytes"] = runner.memory_footprint()
    max_len = static_cache_len(runner, 50) if args.profile != "tiny" else 512
    cuda = device.type == "cuda"
    eager = StaticDecoder(runner.model, max_len=max_len)
    decs = {}
    if cuda:
        decs["cuda-graph"] = StaticDecoder(runner.model, max_len=max_len, graphs=True)
    decs["compiled"] = StaticDecoder(runner.model, max_len=max_len, graphs=cuda, fused=True,
                                     compile_backend=args.compile_backend)
    if "sdpa" in args.variants:
        decs["compiled-sdpa"] = StaticDecoder(runner.model, max_len=max_len, graphs=cuda, fused=True,
                                              compile_backend=args.compile_backend, attention="sdpa")
    if "math" in args.variants:
        decs["compiled-math"] = StaticDecoder(runner.model, max_len=max_len, graphs=cuda, fused=True,
                                              compile_backend=args.compile_backend, attention="math")
    if "eager-write" in args.variants:
        # SDPA for decode steps (what the override replaces), the matmul form for verify steps
        v = StaticDecoder(runner.model, max_len=max_len, graphs=cuda, fused=True, compile_backend=args.compile_backend)
        v.glue.triton_ok = False
        v.glue.fns["attend"] = eager_write_attend(args.compile_backend)
        decs["compiled-eager-write"] = v
    setup = {}
    for name, d in decs.items():
        if d.graphs is not None:
            s = d.capture_graphs(sizes=CURVE)
        else:
            with torch.inference_mode():
                c = prefill(d, torch.ones(1, 4, dtype=torch.long, device=device))
                for m in sorted(set(CURVE)):
                    c.length = 4
                    d.forward(c, input_ids=torch.ones(1, m, dtype=torch.long, device=device), keep=m)
            s = d.compile_s
        setup[name] = {"setup_s": s, "compile_s": d.compile_s, "compile_error": d.glue.error if d.glue else None,
                       "graph_pool_bytes": d.pool_bytes, "cache_bytes": d.memory_bytes()}
    res["setup"] = setup
    gen = torch.Generator(device="cpu").manual_seed(0)
    vocab = runner.model.get_input_embeddings().weight.shape[0]
    prompt = min(args.prompt, max_len - 80)
    ids = torch.randint(3, vocab, (1, prompt + 64), generator=gen).to(device)
    res["prompt_positions"] = prompt
    res["equality"] = equality(eager, decs, ids[:, :prompt], args.eq_steps)
    curve = {}
    with torch.inference_mode():
        for name, d in [("static", eager), *decs.items()]:
            cache = prefill(d, ids[:, :prompt])
            sizes = CURVE if name != "static" else (1, 9)
            curve[name] = {m: step_ms(d, cache, prompt, ids[:, prompt:], m, t, args.reps if name != "static" else 5)
                           for m in sizes}
        lin = {m: linears_ms(eager, m, device, t) for m in CURVE}
    res["curve_ms"] = curve
    res["linears_ms"] = lin
    lin_bytes = sum(b.numel() * b.element_size() for layer in eager.dec.layers for mod in
                    (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                     layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
                    for b in list(mod.parameters()) + list(mod.buffers()))
    kv_bytes = 2 * eager.k[:, :, :, :prompt].numel() * eager.k.element_size()
    head_bytes = sum(p.numel() * p.element_size() for p in eager.head.parameters())
    read = lin_bytes + kv_bytes + head_bytes
    res["floor"] = {"linear_weight_bytes": lin_bytes, "kv_bytes": kv_bytes, "head_bytes": head_bytes,
                    "spec_tbs": args.hbm_tbs, "copy_tbs": bandwidth,
                    "floor_ms_spec": read / (args.hbm_tbs * 1e12) * 1e3,
                    "floor_ms_copy": read / (bandwidth * 1e12) * 1e3 if bandwidth else None,
                    "linears_floor_ms_spec": lin_bytes / (args.hbm_tbs * 1e12) * 1e3}
    best = "compiled" if "compiled" in curve else "static"
    res["ratios"] = {name: {"step_over_linears_m1": c[1] / lin[1], "step_over_linears_m9": c[9] / lin[9],
                            "step_over_floor_spec": c[1] / res["floor"]["floor_ms_spec"],
                            "verify9_in_decode_steps": c[9] / c[1]}
                     for name, c in curve.items() if 9 in c}
    res["break_even"] = {name: {str(b): {"accepted_needed": metrics.break_even_accepted(c, b),
                                         "alpha": metrics.break_even_alpha(c, b)} for b in CURVE if b > 1}
                         for name, c in curve.items() if name != "static"}
    sim_dec = decs.get(args.sim_impl, decs.get("compiled", eager))
    res["sim_alpha"] = sim_alpha(sim_dec, ids[:, :prompt], t, alphas=args.alphas,
                                 block=args.block, tokens=args.tokens, seeds=args.seeds, device=device)
    res["sim_alpha"]["impl"] = args.sim_impl if args.sim_impl in decs else best
    res["sim_alpha"]["predicted_break_even_alpha"] = metrics.break_even_alpha(curve[res["sim_alpha"]["impl"]],
                                                                              args.block)
    if cuda:
        res["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        res["device_used"] = gpu_memory.used_bytes(device)
    del runner, eager, decs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return res


def teacher(dec, prompt_ids, feed):
    """Logits of a prefill, then one decode step per token of `feed`, then a verify of feed[:9]."""
    with torch.inference_mode():
        cache = prefill(dec, prompt_ids)
        steps = [dec.forward(cache, input_ids=feed[:, i:i + 1])[-1] for i in range(feed.shape[1])]
        verify = dec.forward(cache, input_ids=feed[:, :9], keep=9)
    return torch.stack(steps).float(), verify.float()


def fp32_check(args, device):
    """Is the compiled path's bf16 difference rounding? The 7B-shaped target in fp32: compiled vs eager
    static in fp32; then the same weights in bf16: each path's distance to the fp32 eager logits."""
    runner = build_shaped("target", device=device, quant="none", dtype=torch.float32)
    model, max_len = runner.model, 2304
    gen = torch.Generator(device="cpu").manual_seed(1)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (1, args.prompt + 16), generator=gen).to(device)
    prompt, feed = ids[:, :args.prompt], ids[:, args.prompt:]
    out = {}

    def dist(a, b, ref):
        scale = float(ref[0].std())
        return {"decode_max_rel": float((a[0] - b[0]).abs().max()) / scale,
                "decode_mean_rel": float((a[0] - b[0]).abs().mean()) / scale,
                "verify_max_rel": float((a[1] - b[1]).abs().max()) / scale,
                "argmax_match": float((a[0].argmax(-1) == b[0].argmax(-1)).float().mean())}

    ref = teacher(StaticDecoder(model, max_len=max_len), prompt, feed)
    for name, kw in (("compiled", {"attention": "sdpa"}), ("compiled-math", {"attention": "math"})):
        d = StaticDecoder(model, max_len=max_len, graphs=True, fused=True, **kw)
        d.capture_graphs(sizes=(1, 9))
        out[f"fp32 {name} vs fp32 static"] = dist(teacher(d, prompt, feed), ref, ref)
        del d
    model.to(torch.bfloat16)
    torch.cuda.empty_cache()
    for name, kw in (("static", None), ("cuda-graph", {}), ("compiled", {"fused": True, "attention": "sdpa"}),
                     ("compiled-math", {"fused": True, "attention": "math"})):
        d = StaticDecoder(model, max_len=max_len) if kw is None else StaticDecoder(model, max_len=max_len,
                                                                                   graphs=True, **kw)
        if kw is not None:
            d.capture_graphs(sizes=(1, 9))
        out[f"bf16 {name} vs fp32 static"] = dist(teacher(d, prompt, feed), ref, ref)
        del d
    del runner, model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def nf4_pair_memory(args, device):
    """The NF4 pair with compiled decode as the engine holds them in one process: whole-device use."""
    before = gpu_memory.used_bytes(device)
    with gpu_memory.PeakSampler([device]) as sampler:
        drafter, target = load_pair(args.profile, device=device, quant="nf4", dtype=torch.bfloat16)
        setup = configure_decode([drafter, target], "compiled", max_new_tokens=50)
        after = gpu_memory.used_bytes(device)
    proc = None
    if args.process == "on":
        from harness.pipeline import start_drafter_process

        proc = start_drafter_process(args.profile, device=device, quant="nf4", dtype=torch.bfloat16,
                                     decode_impl="compiled", max_new_tokens=50)
        with_process = gpu_memory.used_bytes(device)
        proc.close()
    out = {"device_used_before": before["device_used"], "device_used_after": after["device_used"],
           "with_drafter_process": with_process if proc is not None else None,
           "processes_after": after["processes"], "peaks": sampler.peaks(),
           "weights_bytes": {"drafter": drafter.memory_footprint(), "target": target.memory_footprint()},
           "decode_setup": setup, "torch_allocated_bytes": torch.cuda.memory_allocated(device),
           "torch_reserved_bytes": torch.cuda.memory_reserved(device)}
    del drafter, target
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/precision-probe")
    p.add_argument("--device", default="cuda")
    p.add_argument("--profile", default="7b-shaped")
    p.add_argument("--precisions", default="bf16,nf4,int4")
    p.add_argument("--prompt", type=int, default=2070, help="prompt positions before the timed steps")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--eq-steps", type=int, default=16)
    p.add_argument("--alphas", default="0,0.2,0.4,0.6,0.7,0.8,0.9,1.0")
    p.add_argument("--block", type=int, default=9, help="hidden block size of the simulated-alpha runs")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--sim-impl", default="compiled", help="decoder of the simulated-alpha runs")
    p.add_argument("--hbm-tbs", type=float, default=4.8, help="spec bandwidth, TB/s (H200: 4.8)")
    p.add_argument("--compile-backend", default="inductor", help="aot_eager: a quick CPU dry run")
    p.add_argument("--variants", default="math",
                   help="extra compiled variants to time: sdpa / math (attention for every step size), eager-write "
                        "(K/V write and SDPA eager), comma-separated or none")
    p.add_argument("--fp32-check", choices=["on", "off"], default="on",
                   help="fp32 7B-shaped target: compiled vs eager, and each bf16 path vs fp32")
    p.add_argument("--process", choices=["on", "off"], default="on",
                   help="with the pair, the drafter again in its own process (the CUDA default's layout)")
    p.add_argument("--pair", choices=["on", "off"], default="on")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip remaining parts past this many seconds")
    args = p.parse_args()
    args.alphas = [float(a) for a in args.alphas.split(",")]
    args.variants = [v for v in args.variants.split(",") if v and v != "none"]
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "argv": sys.argv, "precisions": {}, "errors": {}}
    t = timer(device)
    bandwidth = copy_bandwidth_tbs(device) if device.type == "cuda" else None
    results["copy_bandwidth_tbs"] = bandwidth

    def save():
        (out / "precision_probe.json").write_text(json.dumps(results, indent=1, default=str))

    if args.pair == "on" and device.type == "cuda":
        try:
            results["nf4_pair"] = nf4_pair_memory(args, device)
            print(f"nf4 pair: {json.dumps({k: v for k, v in results['nf4_pair'].items() if k != 'decode_setup'})}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001
            results["errors"]["nf4_pair"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(results["errors"]["nf4_pair"], flush=True)
        save()
    for precision in [p for p in args.precisions.split(",") if p]:
        if time.perf_counter() - t_start > args.budget_s:
            results["errors"][precision] = "skipped: time budget"
            continue
        try:
            r = probe_precision(args, precision, device, t, bandwidth)
            results["precisions"][precision] = r
            c = r["curve_ms"]
            print(f"[{time.perf_counter() - t_start:.0f}s] {precision}: decode ms " +
                  ", ".join(f"{k} {v[1]:.3f}" for k, v in c.items()) + f"; linears {r['linears_ms'][1]:.3f}; "
                  f"floor {r['floor']['floor_ms_spec']:.3f}; ratios {json.dumps(r['ratios'])}; "
                  f"eq {json.dumps(r['equality'])}; setup {json.dumps(r['setup'])}", flush=True)
        except Exception as exc:  # noqa: BLE001 - one precision failing keeps the others' results
            results["errors"][precision] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(f"{precision} failed: {results['errors'][precision]}", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()
    if args.fp32_check == "on" and device.type == "cuda" and time.perf_counter() - t_start < args.budget_s:
        try:
            results["fp32_check"] = fp32_check(args, device)
            print(f"fp32 check: {json.dumps(results['fp32_check'])}", flush=True)
        except Exception as exc:  # noqa: BLE001
            results["errors"]["fp32_check"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(results["errors"]["fp32_check"], flush=True)
    results["wall_s"] = time.perf_counter() - t_start
    save()
    print(f"done in {results['wall_s']:.0f} s -> {out / 'precision_probe.json'}")


if __name__ == "__main__":
    main()
