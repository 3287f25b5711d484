"""Codebooks: NormalFloat-k (NF-k) and symmetric integer (INT-k) levels in [-1, 1].

NF-k follows docs/method.md 2.1, which is the construction of bitsandbytes' ``create_normal_map``
generalised to k bits: asymmetric normal quantiles with an exact zero. For k = 4 the table
equals bitsandbytes' NF4 table (tests check it against bitsandbytes itself).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from scipy.special import ndtri  # norm.ppf without importing scipy.stats (~1 s per job)

# Tail probability of the outermost level (bitsandbytes' ``offset``).
NF_OFFSET = 0.9677083
QUANTIZERS = ("nf", "int")


@cache
def _nf_levels(bits: int) -> tuple[float, ...]:
    half = 2 ** (bits - 1)
    # bitsandbytes takes the probabilities from a float32 torch.linspace and normalises in
    # float32; do the same so that the NF4 table matches it bit for bit.
    pos_p = torch.linspace(NF_OFFSET, 0.5, half + 1)[:-1].numpy()
    neg_p = torch.linspace(NF_OFFSET, 0.5, half)[:-1].numpy()
    levels = np.concatenate([ndtri(pos_p), [0.0], -ndtri(neg_p)]).astype(np.float32)
    levels = np.sort(levels / np.abs(levels).max())
    return tuple(float(v) for v in levels)


@cache
def _int_levels(bits: int) -> tuple[float, ...]:
    # Symmetric absmax integers: 2^b - 1 levels -q..q with q = 2^(b-1) - 1 (one code unused),
    # so that +absmax and -absmax are both exact. INT2 is therefore ternary {-1, 0, 1}.
    q = 2 ** (bits - 1) - 1
    return tuple(float(v) for v in np.arange(-q, q + 1) / q)


def codebook(bits: int, quantizer: str = "nf") -> torch.Tensor:
    """Sorted levels (float32) of the ``quantizer`` codebook with ``bits`` bits."""
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {quantizer!r}; allowed values: {', '.join(QUANTIZERS)}"
        )
    if bits < 2 or bits > 8:
        raise ValueError(f"codebook bits must be in 2..8, got {bits}")
    levels = _nf_levels(bits) if quantizer == "nf" else _int_levels(bits)
    return torch.tensor(levels, dtype=torch.float32)


def nf_codebook(bits: int) -> torch.Tensor:
    return codebook(bits, "nf")


def midpoints(levels: torch.Tensor) -> torch.Tensor:
    """Bucket boundaries between consecutive sorted levels (nearest-level rounding)."""
    return (levels[1:] + levels[:-1]) / 2
