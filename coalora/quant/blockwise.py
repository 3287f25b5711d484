"""Blockwise absmax quantization with double-quantized scales (docs/method.md 2.1).

Layout: the weight is flattened and viewed as ``[G, B1, B0]``: ``G`` second-level groups, each
of ``B1`` first-level blocks of ``B0`` weights.

1. first-level scales ``s = max|X|`` per block (``[G, B1]``);
2. one offset per matrix ``o = min(s)``; ``t = s - o``;
3. second-level scale ``m = max(t)`` per group, stored in dtype ``d1``;
4. ``t`` quantized to unsigned ``b0``-bit integers against ``m``; ``s^ = q m / (2^b0 - 1) + o``;
5. weights coded as the nearest codebook level of ``X / s^`` (ties go to the lower level).

Padding rule: when ``numel`` is not a multiple of ``B0 * B1`` the flattened weight is padded
with zeros up to the next multiple. Padding never changes a real block's absmax, blocks made
only of padding are left out of ``o = min(s)``, and padded positions are dropped again on
dequantization. Bit accounting (``QuantConfig.bits``) ignores the few padded scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codebooks import codebook, midpoints
from .config import QuantConfig

SCALE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class QuantizedTensor:
    """Codes and double-quantized scales of one matrix; ``dequantize`` inverts it."""

    codes: torch.Tensor  # uint8 [G * B1 * B0] (padded), index into the codebook
    scale_codes: torch.Tensor  # uint8 [G, B1], b0-bit codes of the first-level scales
    second_scales: torch.Tensor  # [G, 1] in dtype d1
    offset: torch.Tensor  # scalar float32, min of the first-level scales
    shape: tuple[int, ...]
    qconfig: QuantConfig
    quantizer: str = "nf"

    def scales(self) -> torch.Tensor:
        """Dequantized first-level scales ``s^`` (float32, ``[G, B1]``)."""
        return dequantize_scales(self.scale_codes, self.second_scales, self.offset, self.qconfig.b0)


def pad_and_block(weight: torch.Tensor, qc: QuantConfig) -> tuple[torch.Tensor, int]:
    """Flatten (float32), zero-pad to a multiple of ``B0*B1`` and view as ``[G, B1, B0]``.

    Returns the blocked tensor and the number of real (non-padding) first-level blocks.
    """
    if weight.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    flat = weight.detach().reshape(-1).to(torch.float32)
    group = qc.B0 * qc.B1
    pad = (-flat.numel()) % group
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    real_blocks = -(-weight.numel() // qc.B0)
    return flat.view(-1, qc.B1, qc.B0), real_blocks


def first_level_scales(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.abs().amax(dim=-1)


def double_quantize_scales(
    scales: torch.Tensor, real_blocks: int, qc: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize first-level scales ``[G, B1]`` -> (b0-bit codes, second-level scales, offset)."""
    offset = scales.reshape(-1)[:real_blocks].min()
    shifted = (scales - offset).clamp_min(0)  # padding-only blocks (s = 0) clamp to 0
    dtype = SCALE_DTYPES[qc.d1]
    # fp16 overflows at 65504: clamp rather than store inf (the few scales above it then
    # saturate at the largest code instead of turning the whole group into NaN).
    second = shifted.amax(dim=-1, keepdim=True).clamp_max(torch.finfo(dtype).max).to(dtype)
    second_f = second.to(torch.float32)
    qmax = 2**qc.b0 - 1
    # A group whose scales all equal the offset has m = 0: every code is 0 and s^ = o.
    ratio = torch.where(second_f > 0, shifted * qmax / second_f.clamp_min(1e-30), 0.0)
    codes = ratio.round().clamp(0, qmax).to(torch.uint8)
    return codes, second, offset


def dequantize_scales(codes, second, offset, b0: int) -> torch.Tensor:
    return codes.to(torch.float32) * (second.to(torch.float32) / (2**b0 - 1)) + offset


def encode_blocks(blocks: torch.Tensor, scales_hat: torch.Tensor, levels: torch.Tensor):
    """Nearest-level codes of ``blocks / s^`` (a zero scale codes every weight as level 0).

    The code is the number of midpoints strictly below the value (``torch.bucketize``'s
    rule, ties to the lower level). For up to 16 levels, counting comparisons is about twice
    as fast as bucketize's binary search on CPU, and gives the same codes.
    """
    safe = torch.where(scales_hat > 0, scales_hat, 1.0).unsqueeze(-1)
    normalized = torch.where(scales_hat.unsqueeze(-1) > 0, blocks / safe, 0.0)
    bounds = midpoints(levels)
    if len(bounds) > 15:
        return torch.bucketize(normalized, bounds)
    codes = torch.zeros(normalized.shape, dtype=torch.uint8, device=normalized.device)
    for bound in bounds.tolist():
        codes += normalized > bound
    return codes


def quantize(weight: torch.Tensor, qc: QuantConfig, quantizer: str = "nf") -> QuantizedTensor:
    """Quantize a weight matrix under ``qc`` (any shape; flattened row-major)."""
    blocks, real_blocks = pad_and_block(weight, qc)
    scale_codes, second, offset = double_quantize_scales(
        first_level_scales(blocks), real_blocks, qc
    )
    scales_hat = dequantize_scales(scale_codes, second, offset, qc.b0)
    levels = codebook(qc.b, quantizer).to(blocks.device)
    codes = encode_blocks(blocks, scales_hat, levels)
    return QuantizedTensor(
        codes=codes.reshape(-1).to(torch.uint8),
        scale_codes=scale_codes,
        second_scales=second,
        offset=offset,
        shape=tuple(weight.shape),
        qconfig=qc,
        quantizer=quantizer,
    )


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    qc = qt.qconfig
    levels = codebook(qc.b, qt.quantizer).to(qt.codes.device)
    values = torch.index_select(levels, 0, qt.codes.long()).view(-1, qc.B1, qc.B0)
    values = values * qt.scales().unsqueeze(-1)
    numel = 1
    for d in qt.shape:
        numel *= d
    return values.reshape(-1)[:numel].reshape(qt.shape).to(dtype)


def quantize_dequantize(
    weight: torch.Tensor, qc: QuantConfig, quantizer: str = "nf"
) -> torch.Tensor:
    """``dequantize(quantize(weight))`` in the weight's dtype: the simulated-quantized weight."""
    return dequantize(quantize(weight, qc, quantizer), dtype=weight.dtype)
