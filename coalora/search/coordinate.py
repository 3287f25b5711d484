"""Discrete coordinate ascent of an acquisition over integer configuration encodings.

Each walker starts at an encoding and, per step, evaluates the acquisition at every +-1
neighbour (one coordinate changed by one, staying inside its range), measures the improvement
as the true difference ``a(x +- e_j) - a(x)``, and takes the best move if it improves. It
stops when no move improves or after ``max_steps`` moves. (The official code used ``a(x + e)``
alone as the "difference" and broke out of the loop after one step, so its candidates equalled
their starting points.) The neighbours of all active walkers are evaluated in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def neighbours(
    x: np.ndarray, cardinalities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All in-range +-1 neighbours of ``x``: (encodings (M, D), coordinate (M,), delta (M,))."""
    coords, deltas = [], []
    for delta in (-1, 1):
        valid = np.flatnonzero((x + delta >= 0) & (x + delta < cardinalities))
        coords.append(valid)
        deltas.append(np.full(len(valid), delta))
    coords, deltas = np.concatenate(coords), np.concatenate(deltas)
    moved = np.repeat(x[None, :], len(coords), axis=0)
    moved[np.arange(len(coords)), coords] += deltas.astype(moved.dtype)
    return moved, coords, deltas


@dataclass
class WalkResult:
    """Where each walker ended."""

    points: np.ndarray  # (K, D) final encodings
    values: np.ndarray  # (K,) acquisition at the final encodings
    start_values: np.ndarray  # (K,) acquisition at the starts
    steps: np.ndarray  # (K,) moves taken


def coordinate_search(
    acquisition: Callable[[np.ndarray], np.ndarray],
    starts,
    cardinalities,
    max_steps: int = 20,
    min_improvement: float = 0.0,
) -> WalkResult:
    """Greedy best-improvement coordinate ascent from each row of ``starts`` (see module doc).

    ``acquisition`` maps an (M, D) integer array to M values and must be deterministic per row
    (independent of the rest of the batch): a walker's current value is reused from the step
    that moved it there. A move is taken only when its improvement exceeds ``min_improvement``.
    """
    cardinalities = np.asarray(cardinalities)
    points = np.asarray(starts)
    if points.ndim != 2 or points.shape[1] != len(cardinalities):
        raise ValueError(f"starts must be (K, {len(cardinalities)}), got {points.shape}")
    if ((points < 0) | (points >= cardinalities)).any():
        raise ValueError("a start has a field index outside its range")
    # Small integers keep the neighbour arrays small (K x 2D x D per step).
    points = points.astype(np.int8 if cardinalities.max() <= 127 else np.int64)
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    values = np.asarray(acquisition(points), dtype=np.float64)
    start_values = values.copy()
    steps = np.zeros(len(points), dtype=np.int64)
    active = np.ones(len(points), dtype=bool)
    for _ in range(max_steps):
        walkers = np.flatnonzero(active)
        if len(walkers) == 0:
            break
        batches = [neighbours(points[w], cardinalities) for w in walkers]
        scores = np.asarray(acquisition(np.concatenate([b[0] for b in batches])), dtype=np.float64)
        offset = 0
        for w, (moved, _, _) in zip(walkers, batches, strict=True):
            moved_values = scores[offset : offset + len(moved)]
            offset += len(moved)
            with np.errstate(invalid="ignore"):  # -inf - -inf (no EHVI anywhere) is no gain
                gain = moved_values - values[w]  # the true difference a(x +- e) - a(x)
            gain = np.where(np.isnan(gain), -np.inf, gain)
            best = int(np.argmax(gain)) if len(gain) else -1
            if best < 0 or not gain[best] > min_improvement:
                active[w] = False
                continue
            points[w] = moved[best]
            values[w] = moved_values[best]
            steps[w] += 1
    return WalkResult(points.astype(np.int64), values, start_values, steps)
