"""NF4 quantization (bitsandbytes) and random materialization of meta-device models.

Only the language model's linear layers go to 4-bit. The vision tower, projector, adaptor and
lm_head stay in the compute dtype, as the seed pipeline did: they are a small share of the weights,
and 4-bit CLIP would change the vision stage timing in a way the real deployment does not.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BitsAndBytesConfig

QUANTS = ("nf4", "none")
COMPUTE_DTYPE = torch.bfloat16


def check_quant(quant: str) -> str:
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
    return quant


def bnb_config(skip_modules: list[str], compute_dtype: torch.dtype = COMPUTE_DTYPE):
    """The one BitsAndBytesConfig used for every NF4 load (tiny, real)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        # Full dotted prefixes, so both substring (older transformers) and prefix matching agree.
        llm_int8_skip_modules=list(skip_modules),
    )


def _skipped(name: str, skip_modules: list[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip_modules)


def _init_(t: torch.Tensor, name: str, gen: torch.Generator, std: float = 0.02) -> torch.Tensor:
    # Norm weights at 1 and biases at 0 keep random activations finite through 32 layers.
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return t.zero_()
    if t.ndim == 1 and ("norm" in name or "layernorm" in name or "layrnorm" in name):
        return t.fill_(1.0)
    return t.normal_(0.0, std, generator=gen)


def random_init_(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights for every parameter (our own init, independent of how a
    transformers version initializes modules)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            cpu = torch.empty(p.shape, dtype=torch.float32)
            p.copy_(_init_(cpu, name, gen).to(p.dtype))
    return model


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(module, name, nn.Parameter(value, requires_grad=False))


def materialize_(model: nn.Module, *, device: str | torch.device, dtype: torch.dtype, quant: str,
                 skip_modules: list[str], seed: int = 0) -> nn.Module:
    """Turn a model built under `init_empty_weights` (params on meta, buffers real) into a random
    model on `device`, one tensor at a time.

    With quant="nf4" each eligible nn.Linear is replaced by a bitsandbytes Linear4bit (NF4, double
    quant, bf16 compute) right after its bf16 weight is drawn, so peak memory is the quantized
    model plus one bf16 layer, never a full bf16 copy of a 7B model."""
    import bitsandbytes as bnb  # deferred: optional CUDA dependency, needed only for quant='nf4'

    check_quant(quant)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for mod_name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{mod_name}.{child_name}" if mod_name else child_name
                if not isinstance(child, nn.Linear) or quant != "nf4" or _skipped(full, skip_modules):
                    continue
                w = torch.empty(child.out_features, child.in_features, device=device, dtype=dtype)
                w.normal_(0.0, 0.02, generator=gen)
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=COMPUTE_DTYPE, compress_statistics=True,
                                      quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4").to(device)
                if child.bias is not None:
                    q.bias = nn.Parameter(torch.zeros(child.out_features, device=device, dtype=dtype),
                                          requires_grad=False)
                del w
                setattr(module, child_name, q)
        for mod_name, module in list(model.named_modules()):
            for pname, p in list(module.named_parameters(recurse=False)):
                if p.device.type != "meta":
                    continue
                full = f"{mod_name}.{pname}" if mod_name else pname
                t = torch.empty(p.shape, device=device, dtype=dtype)
                _set_param(module, pname, _init_(t, full, gen))
            for bname, b in list(module.named_buffers(recurse=False)):
                if b is not None and b.device != device:
                    module._buffers[bname] = b.to(device)
    if quant == "nf4":
        model.is_loaded_in_4bit = True
    return model
