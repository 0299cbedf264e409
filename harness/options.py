"""The one table of run options: it generates both `ppbench run`'s flags and the pytest plugin's
`--ppbench-*` options, so the two cannot drift. Importing it must stay cheap (the pytest plugin
loads it at start-up): no torch here. `harness.runconfig` validates and resolves what it parses.

Each option has one attribute name; `cli` / `pytest` give its flag on each side (None: that side
has no such option). Values are parsed as text and checked in one place (`runconfig.resolve`), so
a bad value gets the same one-line message on both sides.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("tiny", "trained", "7b-shaped", "real")
QUANTS = ("nf4", "int4", "none")
DTYPES = ("float32", "bfloat16", "float16")
DECODE_CHOICES = ("auto", "hf", "static", "cuda-graph", "compiled")
OVERLAP_CHOICES = ("auto", "always", "yield-gpu")
DRAFTER_PROCESS_CHOICES = ("auto", "on", "off")
DATA_SCALES = ("small", "dsec")                      # harness.data.synthetic.SCALES
VIDEO_READERS = ("seek", "decode-all", "threaded")   # harness.data.video.VIDEO_READERS
DEFAULT_DURATIONS = ("500ms", "1s", "2s", "4s", "5s", "8s", "10s", "16s", "20s")


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    default: Any = None
    cli: str | None = ""          # "" -> derived: --<name with dashes>
    pytest: str | None = ""       # "" -> derived: --ppbench-<name with dashes>
    type: Any = str
    choices: tuple | None = None
    kwargs: dict = field(default_factory=dict)   # argparse extras (nargs, const, action, metavar)

    def flag(self, side: str) -> str | None:
        value = getattr(self, side)
        if value != "":
            return value
        stem = self.name.replace("_", "-")
        return f"--{stem}" if side == "cli" else f"--ppbench-{stem}"

    def help_text(self) -> str:
        if self.kwargs.get("action") == "store_true" or self.default is None:
            return self.help
        return f"{self.help} (default: {self.default})"


OPTIONS: tuple[Option, ...] = (
    # models
    Option("profile", "trained: tiny models ppbench trains on the synthetic scenes (real acceptance, trained "
           "once and cached); tiny: tiny random-weight checkpoints (the code path only); 7b-shaped: real "
           "7B / CLIP-L shapes with random weights (GPU cost only); real: your local checkpoints "
           "(--drafter-path, --target-path)", "trained", choices=PROFILES),
    Option("drafter_path", "EventGPT-7B checkpoint directory (--profile real only)", kwargs={"metavar": "DIR"}),
    Option("target_path", "Video-LLaVA-7B-hf checkpoint directory (--profile real only)", kwargs={"metavar": "DIR"}),
    Option("allow_pickle", "allow pickle (*.bin) checkpoint weights; unpickling can run arbitrary code from the "
           "file, so only for checkpoints you trust (better: convert them to safetensors once)",
           False, kwargs={"action": "store_true"}),
    Option("event_images", "event images per drafter sample: 5 (the original EventGPT) or 1 (the seed fork's "
           "variant, 578 visual tokens)", "5", type=int, choices=("1", "5")),
    Option("videollava_prompt", "target prompt: model-card ('USER: <video>\\n{q} ASSISTANT:', the "
           "Video-LLaVA-7B-hf model card) or seed ('USER: <video>\\n{q}\\nASSISTANT:', the seed fork's)",
           "model-card", choices=("model-card", "seed")),
    # data
    Option("data_root", "ppbench dataset root with manifests/<duration>.json, e.g. from `ppbench dataset "
           "import-dsec` (default: the embedded generator's data, generated and imported once into the cache)", kwargs={"metavar": "DIR"}),
    Option("data_scale", "scale of the embedded data (generated in DSEC's bulk layout, then imported by "
           "`ppbench dataset import-dsec`): small (320x240 frames, 200 k events/s; CPUs) or dsec "
           "(1440x1080 frames, 3 M events/s; GPU runs)", "small", choices=DATA_SCALES),
    Option("video_reader", "the target's stage 1: seek (ppbench's: seek to each frame's keyframe), "
           "decode-all (the seed's: decode every frame of the clip, keep 8), threaded (decode-all with "
           "ffmpeg threads)", "seek", choices=VIDEO_READERS),
    Option("durations", "comma-separated duration datasets, e.g. 500ms,4s,20s",
           ",".join(DEFAULT_DURATIONS)),
    Option("samples_per_duration", "samples per duration (pytest: = benchmark rounds)", "2", pytest="--ppbench-samples",
           type=int),
    # device and precision
    Option("device", "cpu, cuda or cuda:N; auto: cuda if this torch has a GPU, else cpu. Under pytest an "
           "explicit cpu runs the gpu-marked benchmarks on CPU (smoke mode)", "auto"),
    Option("drafter_device", "put the drafter on another device, e.g. cuda:1 (default: the target's)",
           kwargs={"metavar": "DEVICE"}),
    Option("quant", "LLM linear weights: nf4 (bitsandbytes 4-bit), int4 (torch tinygemm, group 128) or none "
           "(the compute dtype; bf16 is accepted for it); default nf4 on CUDA, none on CPU. Several, comma-"
           "separated (e.g. nf4,bf16,int4), run one after another on the same samples, each into "
           "<out>/<precision>/, and <out>/report.md puts them side by side (its Precision section)",
           kwargs={"metavar": "QUANT[,QUANT...]"}),
    Option("dtype", "compute dtype; default bfloat16 on CUDA, float32 on CPU", choices=DTYPES),
    # decoding
    Option("max_new_tokens", "new tokens per generation", "50", type=int),
    Option("stop_at_eos", "stop decoding at EOS (default: always max-new-tokens)", False, pytest=None,
           kwargs={"action": "store_true"}),
    Option("decode", "decode implementation: hf (transformers eager), static (fixed KV cache), cuda-graph "
           "(static cache, steps replayed as CUDA graphs), compiled (cuda-graph with the steps' glue fused "
           "by torch.compile); auto: compiled on CUDA, hf on CPU", "auto",
           choices=DECODE_CHOICES),
    Option("cache_len", "static KV cache positions (default: visual tokens + text budget + max new tokens + "
           "engine overshoot, rounded up to 128)", type=int, kwargs={"metavar": "N"}),
    Option("cuda_alloc", "CUDA caching allocator: expandable (expandable segments: the pages of freed blocks "
           "go back to the device, so replaced weights and capture warm-ups leave no reserved holes) or default "
           "(torch's fixed segments); a PYTORCH_CUDA_ALLOC_CONF set in the environment wins", "expandable",
           choices=("expandable", "default")),
    # the engine
    Option("overlap", "hidden drafting: always (until the target is ready) or yield-gpu (only while the "
           "target loads its data); auto: yield-gpu when both models share a GPU, else always", "auto",
           choices=OVERLAP_CHOICES),
    Option("drafter_process", "run the engine's drafter in its own process, so the two pipelines share no GIL "
           "(its weights load a second time there); auto: on whenever the drafter runs on CUDA; a bare flag "
           "means on", "auto", choices=DRAFTER_PROCESS_CHOICES, kwargs={"nargs": "?", "const": "on"}),
    Option("warmup", "unrecorded warm-up samples", "1", pytest=None, type=int),
    Option("engine", "also run the parallel-prefill engine and its baselines per sample", "on", pytest=None,
           choices=("on", "off")),
    Option("engine_samples", "run the engine on only the first N samples of each duration (default: all)",
           pytest=None, type=int, kwargs={"metavar": "N"}),
    Option("gammas", "engine draft lengths: adaptive and/or integers >= 1, e.g. adaptive,1,4", "adaptive",
           pytest=None),
    Option("alphas", "simulated acceptance rates in [0, 1] to sweep, e.g. 0,0.35,0.7,0.9 (every result "
           "they give is labelled simulated)", "", pytest=None),
    Option("verify_cost", "measure the target's verify-cost curve (one step of M = 1..the run's largest hidden "
           "block tokens) after the engine runs, for the report's Precision section; auto: on when --quant "
           "lists several precisions", "auto", pytest=None, choices=("auto", "on", "off")),
    Option("assisted", "also try transformers' assisted generation as a baseline", "on", pytest=None,
           choices=("on", "off")),
    # output
    Option("out", "output directory (CLI default: runs/<run id>; pytest default: ppbench-report/ in the "
           "current directory, outside the benchmark storage)", kwargs={"metavar": "DIR"}),
    Option("resume", "continue the run in --out: keep its successful records, retry its failed ones", False,
           pytest=None, kwargs={"action": "store_true"}),
    Option("no_progress", "no progress bars (ours or third-party)", False, pytest=None,
           kwargs={"action": "store_true"}),
    # sharded runs: under torchrun / accelerate launch (harness/shard.py)
    Option("gpus_per_process", "GPUs per launched process: 1 (local rank r on cuda:r) or 2 (target on cuda:2r, "
           "drafter on cuda:2r+1)", "1", pytest=None, type=int, choices=("1", "2")),
    Option("allow_mixed_gpus", "measure even when the launched processes' GPUs are of different kinds", False,
           pytest=None, kwargs={"action": "store_true"}),
    Option("shard_costs", "expected per-sample costs that balance the processes' shares: a run's records.jsonl "
           "or a costs JSON (default: harness/calibration/sample-costs.json)", pytest=None,
           kwargs={"metavar": "FILE"}),
    # pytest only
    Option("bounds", "bounds JSON (default harness/calibration/bounds/<profile>-<device class>.json)", cli=None,
           kwargs={"metavar": "FILE"}),
    Option("gate", "after the session, compare this session's saved benchmark JSON against BASE_JSON with "
           "the statistical gate; regressions fail the session", cli=None, kwargs={"metavar": "BASE_JSON"}),
    Option("gate_thresholds", "per-benchmark thresholds for --ppbench-gate (default: the packaged "
           "harness/calibration/gate-thresholds.json; 'none' for a flat 5%)", cli=None, kwargs={"metavar": "FILE"}),
    Option("inject_delay", "testing aid: add MS of real delay to every STAGE (load, preprocess, vision, "
           "prefill, decode), to check that the gate fires", cli=None, kwargs={"metavar": "STAGE:MS"}),
)
BY_NAME = {o.name: o for o in OPTIONS}


def _argparse_kwargs(opt: Option, dest: str) -> dict:
    kw = dict(opt.kwargs, help=opt.help_text().replace("%", "%%"), dest=dest)
    if "metavar" not in kw and not opt.choices and kw.get("action") != "store_true":
        kw["metavar"] = "N" if opt.type is int else opt.name.split("_")[-1].upper()
    if kw.get("action") == "store_true":
        kw["default"] = False
    else:
        kw["default"] = opt.default
        if opt.choices:
            kw["choices"] = opt.choices
    return kw


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        if opt.flag("cli"):
            parser.add_argument(opt.flag("cli"), **_argparse_kwargs(opt, opt.name))


def add_pytest_options(group) -> None:
    for opt in OPTIONS:
        if opt.flag("pytest"):
            # dest prefixed: pytest has options of its own with these names (--durations)
            group.addoption(opt.flag("pytest"), **_argparse_kwargs(opt, f"ppbench_{opt.name}"))


def defaults(**overrides) -> dict:
    """Raw values with every default (programmatic runs and tests), `overrides` by option name."""
    unknown = set(overrides) - set(BY_NAME)
    if unknown:
        raise KeyError(f"unknown run options {sorted(unknown)}")
    return {**{o.name: o.default for o in OPTIONS}, **overrides}


def from_cli(args: argparse.Namespace) -> dict:
    """Raw values (text, as parsed) by option name; options the CLI lacks take their defaults."""
    return {o.name: getattr(args, o.name, o.default) if o.flag("cli") else o.default for o in OPTIONS}


def from_pytest(config) -> dict:
    return {o.name: config.getoption(o.flag("pytest")) if o.flag("pytest") else o.default for o in OPTIONS}
