"""Rank-r factorisations: the low-rank part of LQ-LoRA / LoftQ and of their allocation costs."""

from __future__ import annotations

import torch

from .targets import QuantTarget


def svd_factors(
    a: torch.Tensor, rank: int, randomized: bool, oversampling: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``L1 = U sqrt(S)``, ``L2 = sqrt(S) V^T`` (LQ-LoRA and peft's
    split). ``randomized`` uses ``torch.svd_lowrank`` with ``rank + oversampling`` columns, its
    random projection seeded by ``seed`` (the caller's RNG is left alone)."""
    if not 1 <= rank <= min(a.shape):
        raise ValueError(f"rank {rank} must be in 1..{min(a.shape)} for a {tuple(a.shape)} matrix")
    if randomized:
        q = min(rank + oversampling, min(a.shape))
        # svd_lowrank draws its projection from the RNG of the tensor's device.
        if a.device.type == "cpu":
            fork = torch.random.fork_rng(devices=[])
        else:
            fork = torch.random.fork_rng(devices=[a.device.index or 0], device_type=a.device.type)
        with fork:
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(a, q=q, niter=2)
        vh = v.mT
    else:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


@torch.no_grad()
def lowrank_residuals(
    weights: dict[str, torch.Tensor], targets: list[QuantTarget], rank: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``W - L1 L2`` per target, ``L1 L2`` the randomized rank-``rank`` SVD of ``W``.

    This is what LQ-LoRA quantizes after its first alternation step (``Q = 0`` first, so
    ``L1 L2 = SVD_r(W)``); its allocation costs are the quantization errors of these
    residuals. A matrix whose smaller side is at most ``rank`` is all low-rank: residual 0.
    """
    out = {}
    for t in targets:
        w = weights[t.name].detach().to(torch.float32)
        if min(w.shape) <= rank:
            out[t.name] = torch.zeros_like(w)
            continue
        l1, l2 = svd_factors(w, rank, randomized=True, seed=seed)
        out[t.name] = w - l1 @ l2
    return out
