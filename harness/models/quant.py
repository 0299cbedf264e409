"""Weight precisions of the language model's linears, and random materialization of meta-device models.

  nf4    bitsandbytes Linear4bit (NF4, double quant, bf16 compute): the seed's choice, the CUDA default
  int4   weight-only int4 through torch's built-in tinygemm kernel (torch.ops.aten._weight_int4pack_mm,
         asymmetric, one bf16 scale and zero per group of INT4_GROUP input channels; gpt-fast's layout)
  none   the compute dtype (bf16 on CUDA: the "bf16" precision of the reports)

Why int4 next to nf4: bitsandbytes' fast 4-bit kernel is a batch-1 GEMV, so a verify step of M > 1
tokens dequantizes the whole weight and runs a bf16 GEMM, costing about three decode steps where bf16
costs about one (issue 19); tinygemm keeps 4-bit weights for every M. It ships with torch (no extra
package), on CUDA as `_weight_int4pack_mm` and on CPU as `_weight_int4pack_mm_for_cpu`, so CPU tests
run the same module.

Which linears stay in the compute dtype is each model's `skip_quant` (eventgpt.py, videollava.py).
NF4 follows the seed's loads: transformers quantizes every linear of Video-LLaVA but the output head
(the seed's BitsAndBytesConfig names no skip modules), towers and projector included, while
EventGPT's CLIP tower, projector and adaptor are built apart from its language model and stay bf16.
int4 quantizes the language models only (tinygemm is a decode kernel; the seed has no int4).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BitsAndBytesConfig

QUANTS = ("nf4", "int4", "none")
INT4_GROUP = 128          # tinygemm group size (input channels per scale/zero)
INT4_INNER_K_TILES = 8   # tinygemm packing (CUDA); in_features must be a multiple of 16 * this
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


class Int4Linear(nn.Module):
    """y = x @ dequant(W).T (+ bias) with W as tinygemm int4: `weight` packed by
    _convert_weight_to_int4pack, `scales_and_zeros` (in/group, out, 2) in bf16, where a weight is
    (q - 8) * scale + zero for its 4-bit code q. Activations run in bf16 (the kernel's dtype)."""

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor, scales_and_zeros: torch.Tensor,
                 group: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer("weight", weight)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", bias)
        self.cpu = weight.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu if self.cpu else torch.ops.aten._weight_int4pack_mm
        y = mm(x2, self.weight, self.group, self.scales_and_zeros).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group={self.group}"


def int4_group(in_features: int) -> int:
    """INT4_GROUP, or the largest smaller group tinygemm accepts that divides in_features (tiny models)."""
    for g in (INT4_GROUP, 64, 32):
        if in_features % g == 0:
            return g
    raise ValueError(f"int4 needs in_features divisible by 32, got {in_features}")


def quantize_int4(weight: torch.Tensor, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(packed weight, scales_and_zeros, group) of a (out, in) weight, asymmetric min/max per group
    (the quantization gpt-fast and torchao use with this kernel)."""
    out_f, in_f = weight.shape
    group = group or int4_group(in_f)
    w = weight.float().reshape(-1, group)
    lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    scales = (hi - lo).clamp(min=1e-6) / 15
    zeros = lo + scales * 8
    q = (w - lo).div(scales).round().clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
    sz = torch.stack([scales.reshape(out_f, -1), zeros.reshape(out_f, -1)], dim=2)
    sz = sz.to(torch.bfloat16).transpose(0, 1).contiguous()        # (in/group, out, 2)
    if weight.device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    else:
        if in_f % (16 * INT4_INNER_K_TILES):
            raise ValueError(f"int4 on CUDA needs in_features divisible by {16 * INT4_INNER_K_TILES}, got {in_f}")
        packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8),
                                                             INT4_INNER_K_TILES)
    return packed, sz, group


def int4_linear(linear: nn.Linear, weight: torch.Tensor | None = None) -> Int4Linear:
    """An Int4Linear of `linear` (or of `weight`, with linear's shape and bias)."""
    w = linear.weight if weight is None else weight
    packed, sz, group = quantize_int4(w.detach())
    bias = None if linear.bias is None else linear.bias.detach().to(w.dtype)
    return Int4Linear(linear.in_features, linear.out_features, packed, sz, group, bias)


def quantize_int4_(model: nn.Module, skip_modules: list[str]) -> nn.Module:
    """Replace every eligible nn.Linear (not under skip_modules) with an Int4Linear, in place; one
    layer at a time, so peak memory is the model plus one layer's codes."""
    with torch.no_grad():
        for mod_name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{mod_name}.{child_name}" if mod_name else child_name
                if isinstance(child, nn.Linear) and not _skipped(full, skip_modules):
                    setattr(module, child_name, int4_linear(child))
    return model


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
    quant, bf16 compute) right after its bf16 weight is drawn, with quant="int4" by an Int4Linear,
    so peak memory is the quantized model plus one bf16 layer, never a full bf16 copy of a 7B model."""
    check_quant(quant)
    if quant == "nf4":
        import bitsandbytes as bnb  # deferred: optional CUDA dependency, needed only for quant='nf4'

    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for mod_name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{mod_name}.{child_name}" if mod_name else child_name
                if not isinstance(child, nn.Linear) or quant == "none" or _skipped(full, skip_modules):
                    continue
                w = torch.empty(child.out_features, child.in_features, device=device, dtype=dtype)
                w.normal_(0.0, 0.02, generator=gen)
                if quant == "int4":
                    bias = None if child.bias is None else torch.zeros(child.out_features, device=device, dtype=dtype)
                    packed, sz, group = quantize_int4(w)
                    setattr(module, child_name, Int4Linear(child.in_features, child.out_features, packed, sz,
                                                           group, bias))
                    del w
                    continue
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
