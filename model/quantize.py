"""Lower precision for a served model's decoder, for fast CPU decoding: int8 dynamic quantization, or bf16
for the vocabulary projection on CPUs with bf16 matrix instructions.

Decoding is a loop of small matrix products: a handful of rows (the replies still running) times the
decoder's weights. With so few rows an fp32 product is bound by reading the weights, and the vocabulary
projection (dec_hidden x vocab_size, 8 MB at the cpu preset) dominates. Dynamic quantization stores those
weights as int8 with one scale per output row (fbgemm's per-channel kernels) and quantizes each step's
activations on the fly, so a step reads a quarter of the bytes and runs int8 dot products.

Only the decoder is quantized (its GRU and its output layer): the encoders run once per request and keep
full precision, and so does training. The quantized model gives slightly different logits; the report
(docs/benchmarks.md) shows its effect on the evaluation metrics.

``bf16`` keeps the decoder's GRU in fp32 and runs only the vocabulary projection (decoder.out) in bf16, where
its products are large: the anti-LM term scores about a thousand positions through it at once, which AMX
runs several times faster than fp32 (docs/benchmarks.md). Its logits are returned as fp32, so everything
after the projection (log-softmax, sums, the reranker) stays fp32. It needs AVX512-BF16 or AMX on the CPU
(without them bf16 products are emulated and slower than fp32), or a GPU.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .cvae import CVAE

Quantize = Literal["none", "int8", "bf16"]
MODES: tuple[str, ...] = ("none", "int8", "bf16")


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (Linux: the avx512_bf16 or amx_bf16 flags)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Bf16Linear(nn.Module):
    """A Linear layer whose product runs in bf16: fp32 in, fp32 out, bf16 weights."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.weight = nn.Parameter(lin.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().to(torch.bfloat16),
                                                               requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).float()


def quantize_engine() -> str | None:
    """The quantized-kernel backend to use on this machine, or None when there is none."""
    engines = torch.backends.quantized.supported_engines
    for name in ("fbgemm", "x86"):
        if name in engines:
            return name
    return None


def quantize_decoder(model: CVAE, mode: Quantize | str = "int8") -> CVAE:
    """Quantize ``model.decoder`` in place (mode 'int8', or 'bf16': its vocabulary projection) or leave it
    alone ('none'); returns the model.

    The model must be on the CPU and in eval mode: quantized modules have no backward pass and no CUDA kernels.
    """
    if mode == "none":
        return model
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    if is_quantized(model):
        return model
    if mode == "bf16":
        device = next(model.parameters()).device
        if device.type == "cpu" and not cpu_has_bf16():
            raise ValueError("bf16 needs bf16 matrix instructions (AVX512-BF16 or AMX), which this CPU lacks: "
                             "its bf16 products would run slower than fp32; use none or int8")
        model.eval()
        model.decoder.out = Bf16Linear(model.decoder.out).to(device)  # type: ignore[assignment]
        return model
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 quantization runs on the CPU only")
    engine = quantize_engine()
    if engine is None:
        raise ValueError("this torch build has no quantized CPU kernels (fbgemm/x86)")
    torch.backends.quantized.engine = engine
    model.eval()
    # Per-channel weight scales: the default qconfig of quantize_dynamic for Linear layers is per-tensor,
    # which costs accuracy on the vocabulary projection's rows of very different norms.
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    model.decoder.out = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(model.decoder.out), {nn.Linear: qconfig}, dtype=torch.qint8)[0]
    model.decoder.rnn = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(model.decoder.rnn), {nn.GRU: torch.ao.quantization.default_dynamic_qconfig},
        dtype=torch.qint8)[0]
    return model


def is_quantized(model: CVAE) -> bool:
    return type(model.decoder.out) is not nn.Linear
