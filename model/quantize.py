"""Int8 dynamic quantization of a served model's decoder, for fast CPU decoding.

Decoding is a loop of small matrix products: a handful of rows (the replies still running) times the
decoder's weights. With so few rows an fp32 product is bound by reading the weights, and the vocabulary
projection (dec_hidden x vocab_size, 8 MB at the cpu preset) dominates. Dynamic quantization stores those
weights as int8 with one scale per output row (fbgemm's per-channel kernels) and quantizes each step's
activations on the fly, so a step reads a quarter of the bytes and runs int8 dot products.

Only the decoder is quantized (its GRU and its output layer): the encoders run once per request and keep
full precision, and so does training. The quantized model gives slightly different logits; the report
(docs/benchmarks.md) shows its effect on the evaluation metrics.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .cvae import CVAE

Quantize = Literal["none", "int8"]
MODES: tuple[str, ...] = ("none", "int8")


def quantize_engine() -> str | None:
    """The quantized-kernel backend to use on this machine, or None when there is none."""
    engines = torch.backends.quantized.supported_engines
    for name in ("fbgemm", "x86"):
        if name in engines:
            return name
    return None


def quantize_decoder(model: CVAE, mode: Quantize | str = "int8") -> CVAE:
    """Quantize ``model.decoder`` in place (mode 'int8') or leave it alone ('none'); returns the model.

    The model must be on the CPU and in eval mode: quantized modules have no backward pass and no CUDA kernels.
    """
    if mode == "none":
        return model
    if mode != "int8":
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    if is_quantized(model):
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
