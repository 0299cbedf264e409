"""Tiny random Llama TextRunner pairs for engine tests: built in-process, fp32, CPU, milliseconds."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.models.base import TextRunner

VOCAB = 96


class CharTokenizer:
    """Stand-in tokenizer: one id per character, after an optional fixed prefix of ids.

    A prefix lets drafter and target see the same question with different prompt lengths,
    as EventGPT and Video-LLaVA do."""

    def __init__(self, vocab: int = VOCAB, prefix: tuple[int, ...] = (1,), eos_token_id: int | None = 2):
        self.vocab, self.prefix, self.eos_token_id = vocab, tuple(prefix), eos_token_id

    def __call__(self, text: str, return_tensors: str = "pt"):
        ids = list(self.prefix) + [3 + ord(c) % (self.vocab - 3) for c in text]
        return SimpleNamespace(input_ids=torch.tensor([ids], dtype=torch.long))


def tiny_llama(seed: int, *, vocab: int = VOCAB, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float().eval()
    # Random init gives near-uniform logits; sharpen them so greedy ties cannot flip between a
    # 1-token decode and a k-token verify (different fp32 summation order).
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def runner(model, *, prefix=(1,), eos_token_id: int | None = 2, name: str | None = None) -> TextRunner:
    return TextRunner(model, CharTokenizer(prefix=prefix, eos_token_id=eos_token_id), name=name)


def same_pair(seed: int = 0, eos_token_id: int | None = 2):
    """Drafter == target: one model, one prompt."""
    model = tiny_llama(seed)
    return (runner(model, eos_token_id=eos_token_id, name="drafter"),
            runner(model, eos_token_id=eos_token_id, name="target"))


def random_pair(seed: int = 0, drafter_prefix=(1, 5, 6, 7), eos_token_id: int | None = 2):
    """Independent random drafter and target with different prompt lengths."""
    return (runner(tiny_llama(seed + 1000, layers=1), prefix=drafter_prefix, eos_token_id=eos_token_id,
                   name="drafter"),
            runner(tiny_llama(seed), eos_token_id=eos_token_id, name="target"))


def drafter_of(kind: str, seed: int = 0, eos_token_id: int | None = 2):
    """The drafter of same_pair / random_pair, rebuilt from its seed: a picklable factory for a
    drafter process (tiny_llama seeds its weights, so the child's copy equals the parent's)."""
    return (same_pair if kind == "same" else random_pair)(seed, eos_token_id=eos_token_id)[0]


class FailingDrafter(TextRunner):
    def load_inputs(self, sample):
        from harness.errors import DataError

        raise DataError("events unreadable", path="events.h5", sample=str(sample))


def failing_drafter():
    return FailingDrafter(tiny_llama(0), CharTokenizer(), name="drafter")


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt from its args (two required arguments)."""

    def __init__(self, code, what):
        super().__init__(f"code {code}: {what}")


class TwoArgFailingDrafter(TextRunner):
    def load_inputs(self, sample):
        raise TwoArgError(7, f"cannot read sample {sample}")


def two_arg_failing_drafter():
    return TwoArgFailingDrafter(tiny_llama(0), CharTokenizer(), name="drafter")


def drafter_that_cannot_load():
    from harness.errors import ModelLoadError

    raise ModelLoadError("missing weights", path="/models/EventGPT-7b")


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models run several times faster on one intra-op thread (and the two pipelines already
    take a core each)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class Slow:
    """A runner whose methods `slow` (name -> ms) sleep first: a stand-in for a slow stage."""

    def __init__(self, inner, **slow):
        self._inner, self._slow = inner, slow

    def __getattr__(self, name):
        import time

        attr = getattr(self._inner, name)
        if name not in self._slow:
            return attr

        def slowed(*a, **k):
            time.sleep(self._slow[name] / 1e3)
            return attr(*a, **k)
        return slowed
