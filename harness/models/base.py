"""The one interface both models implement.

Stages and the engine only ever call these methods, so they never branch on model type:

    raw      = runner.load_inputs(sample)          # stage 1: data loading (events / video frames)
    prepared = runner.preprocess(raw, question)    # stage 2: tokenization + image transforms
    embeds   = runner.encode_vision(prepared)      # stage 3: vision tower + projector, spliced into
                                                   #          the prompt's token embeddings -> (1, L, D)
    cache, logits = runner.prefill(embeds)         # stage 4: KV cache + next-token logits (V,)
    logits   = runner.decode(token, cache)         # stage 5: one step -> (V,)
    logits   = runner.verify(tokens, cache)        # k tokens in one forward -> (k, V)
    runner.crop(cache, length)                     # drop cache entries past `length`

Logits come back as float32 on the model's device. Token arguments are 1-D LongTensors (or ints).
`CausalLMRunner` implements stages 4-5 for any transformers causal LM that accepts `inputs_embeds`;
the two VLM runners only add stages 1-3. `TextRunner` is a text-only runner (the tester used by
engine tests: any Llama-shaped LM, any size).
"""
from __future__ import annotations

import inspect
import time
import warnings
from typing import Any

import torch
from transformers import DynamicCache

from harness.models.static_decode import (GRAPHED_IMPLS, GraphedFunction, StaticDecoder, prefill_buckets,
                                          resolve_decode_impl)


def _cache_kwarg(model: torch.nn.Module) -> str:
    # transformers >= 5.2x renamed `past_key_values` to `cache`; the GPU image runs an older 5.x.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Greedy selection; the engine takes a `select` function so sampling can be plugged in later."""
    return logits.argmax(dim=-1)


class CausalLMRunner:
    role: str = "model"          # "drafter" | "target"
    modality: str = "text"       # "events" | "video" | "text"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or type(model).__name__
        self._cache_kw = _cache_kwarg(model)
        self.decode_impl = "hf"
        self.static: StaticDecoder | None = None   # set by use_decode_impl
        self.vision_graph: GraphedFunction | None = None
        self.decode_setup: dict = {"decode_impl": "hf"}

    def use_decode_impl(self, impl: str = "auto", *, max_len: int | None = None,
                        prompt_tokens: tuple[int, int] | None = None, compile_backend="inductor") -> dict:
        """Switch stages 4-5 to 'hf', 'static', 'cuda-graph' or 'compiled' (see models/static_decode.py).
        Static impls need `max_len`, the cache size in positions. 'cuda-graph' also graphs the
        prefill for prompts of prompt_tokens = (shortest, longest) positions, in buckets, and the
        vision stage's one input shape (`vision_example`); 'compiled' is 'cuda-graph' with the
        decode/verify steps' glue compiled (on CPU: compiled, no graphs). Returns what was set up."""
        impl = resolve_decode_impl(impl, self.device)
        self.static, self.vision_graph, self.decode_impl = None, None, impl
        info = {"decode_impl": impl}
        if impl != "hf":
            if not max_len or max_len < 2:
                raise ValueError(f"decode impl {impl!r} needs max_len (cache positions), got {max_len!r}")
            graphs = impl in GRAPHED_IMPLS and self.device.type == "cuda"
            self.static = StaticDecoder(self.model, max_len=max_len, graphs=graphs, fused=impl == "compiled",
                                        compile_backend=compile_backend)
            info.update(cache_len=int(max_len), cache_bytes=self.static.memory_bytes(),
                        fused_linears=sum(f is not None for pair in self.static.fused_linears for f in pair),
                        fused_extra_bytes=self.static.fused_extra_bytes())
            if graphs:
                buckets = prefill_buckets(*prompt_tokens, max_len=max_len) if prompt_tokens else []
                seconds = self.static.capture_graphs(prefill_sizes=buckets)
                example = self.vision_example()
                if example is not None:
                    t0 = time.perf_counter()
                    reserved = torch.cuda.memory_reserved(self.device)
                    try:
                        # Into the decoder's pool: stage 3 never runs while a prefill or a step does.
                        self.vision_graph = GraphedFunction(self.vision_features, example, pool=self.static.graph_pool)
                        info["vision_graph_input"] = list(example.shape)
                        torch.cuda.empty_cache()    # the eager warm-ups' blocks, outside the pool
                        info["vision_graph_bytes"] = torch.cuda.memory_reserved(self.device) - reserved
                    except Exception as exc:  # a tower that cannot be captured still runs, eagerly
                        warnings.warn(f"{self.name}: vision stage runs eagerly, its CUDA graph capture "
                                      f"failed: {type(exc).__name__}: {exc}")
                        info["vision_graph_error"] = f"{type(exc).__name__}: {exc}"
                    seconds += time.perf_counter() - t0
                info["graph_capture_s"] = round(seconds, 3)
                info["graph_sizes"] = sorted(self.static.graphs)
                info["prefill_graph_sizes"] = sorted(self.static.prefill_graphs)
                info["graph_pool_bytes"] = self.static.pool_bytes
            elif impl == "compiled":      # no graphs (CPU): compile now, not in the first timed steps
                self.static.warm_compile()
            if impl == "compiled":
                info["compile_s"] = round(self.static.compile_s, 3)
                info["compile_backend"] = str(self.static.glue.backend)
                info["attention"] = self.static.glue.kinds()
                if self.static.glue.error:
                    info["compile_error"] = self.static.glue.error
        self.decode_setup = info
        return info

    # -- properties -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def config(self):
        return self.model.config

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None)

    def memory_footprint(self) -> int:
        """Bytes held by parameters and buffers (4-bit weights counted packed)."""
        return int(self.model.get_memory_footprint())

    # -- stages 1-3 (subclasses) --------------------------------------------------------------------
    def load_inputs(self, sample: Any) -> Any:
        raise NotImplementedError

    def preprocess(self, raw: Any, question: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode_vision(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stage 3's tensor function (vision tower + projector) of the pixel input; the part that
        is replayed as a CUDA graph under 'cuda-graph'. VLM runners implement it."""
        raise NotImplementedError

    def vision_example(self) -> torch.Tensor | None:
        """A pixel input of the one shape stage 3 sees (zeros), to capture its graph; None: no graph."""
        return None

    def _vision(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_graph(pixels) if self.vision_graph is not None else self.vision_features(pixels)

    # -- stages 4-5: shared by every causal LM -----------------------------------------------------
    def _forward(self, cache: DynamicCache, *, input_ids=None, inputs_embeds=None, keep: int = 1):
        if self.static is not None:
            return self.static.forward(cache, input_ids=input_ids, inputs_embeds=inputs_embeds, keep=keep)
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=True,
                         logits_to_keep=keep, **{self._cache_kw: cache})
        return out.logits[0].float()

    def new_cache(self) -> DynamicCache:
        return self.static.new_cache() if self.static is not None else DynamicCache()

    @torch.inference_mode()
    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
        cache = self.new_cache()
        logits = self._forward(cache, inputs_embeds=inputs_embeds, keep=1)
        return cache, logits[-1]

    @torch.inference_mode()
    def decode(self, token: torch.Tensor | int, cache: DynamicCache) -> torch.Tensor:
        ids = torch.as_tensor(token, device=self.device).reshape(1, 1)
        return self._forward(cache, input_ids=ids, keep=1)[-1]

    @torch.inference_mode()
    def verify(self, tokens: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        ids = torch.as_tensor(tokens, device=self.device).reshape(1, -1)
        return self._forward(cache, input_ids=ids, keep=ids.shape[1])

    @staticmethod
    def cache_len(cache: DynamicCache) -> int:
        return int(cache.get_seq_length())

    @staticmethod
    def crop(cache: DynamicCache, length: int) -> None:
        # Negative `crop` means "remove this many" in every transformers 5.x; positive changed meaning.
        extra = int(cache.get_seq_length()) - int(length)
        if extra < 0:
            raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} to {length}")
        if extra:
            cache.crop(-extra)


class TextRunner(CausalLMRunner):
    """Text-only runner over any causal LM: the 'sample' is just the prompt text."""

    def load_inputs(self, sample: Any) -> str:
        return sample if isinstance(sample, str) else sample.question

    def preprocess(self, raw: str, question: str | None = None) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(raw, return_tensors="pt").input_ids
        return {"input_ids": ids.to(self.device)}

    @torch.inference_mode()
    def encode_vision(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.get_input_embeddings()(prepared["input_ids"])
