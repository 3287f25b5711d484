"""Pareto fronts, hypervolume, reference points and segmented filtering (minimisation).

Every function here treats points as rows of an ``(n, m)`` array whose columns are objectives
to be *minimised* (for the search: column 0 = loss, column 1 = average bits). botorch works
with maximisation; the conversions (negations) happen only inside this module.

Hypervolume normalisation: ``hypervolume(points, ref, ideal)`` divides the dominated area by
the box ``prod(ref - ideal)``, so a front that reaches ``ideal`` in every objective at once
scores 1 and an empty front scores 0. The search reports it with ``ideal`` = the per-objective
minimum and ``ref`` = ``reference_point(...)`` (maximum + 10% of the range) over the whole pool
of evaluated configurations of that round.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume
from botorch.utils.multi_objective.pareto import is_non_dominated


def _as_points(points, name: str = "points", n_objectives: int = 2) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, array.shape[-1] if array.ndim == 2 else n_objectives)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n points x m objectives), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def pareto_mask(points) -> np.ndarray:
    """Boolean mask of the non-dominated rows (minimisation of every column).

    A row is dominated when another row is <= in every objective and < in at least one.
    Identical rows do not dominate each other, so ties are all kept (a configuration is never
    dropped only because another one scored exactly the same).
    """
    array = _as_points(points)
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    mask = is_non_dominated(torch.from_numpy(array), maximize=False, deduplicate=False)
    return mask.numpy()


def reference_point(points, margin: float = 0.1) -> np.ndarray:
    """A reference point strictly worse than every row: ``max + margin * (max - min)``.

    An objective with zero range (e.g. a single point) gets ``max + margin * max(|max|, 1)``
    instead, so the point stays strictly worse. (The official code's (0, 0) lies *better* than
    every observation, which makes every hypervolume zero.)
    """
    array = _as_points(points)
    if len(array) == 0:
        raise ValueError("reference_point needs at least one point")
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    high, low = array.max(axis=0), array.min(axis=0)
    span = high - low
    span = np.where(span > 0, span, np.maximum(np.abs(high), 1.0))
    return high + margin * span


def _hypervolume_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``points`` and bounded by ``ref`` (2-D minimisation), by a sweep."""
    inside = points[(points < ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    # Sweep along objective 0; each point adds a rectangle up to the best (lowest) objective-1
    # value seen so far. Ties in objective 0 are ordered by objective 1 so the best comes first.
    order = np.lexsort((inside[:, 1], inside[:, 0]))
    area, best_y = 0.0, ref[1]
    for x, y in inside[order]:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def hypervolume(points, ref, ideal=None) -> float:
    """Hypervolume of ``points`` (minimisation) with respect to the reference point ``ref``.

    Points that are not strictly better than ``ref`` in every objective contribute nothing.
    Two objectives use an exact sweep; more use botorch's ``Hypervolume``. With ``ideal``
    given, the result is divided by ``prod(ref - ideal)`` (see the module docstring).
    """
    ref = np.asarray(ref, dtype=np.float64)
    array = _as_points(points, n_objectives=ref.size)
    if ref.ndim != 1 or array.shape[1] != len(ref):
        raise ValueError(
            f"reference point {ref.tolist()} does not match {array.shape[1]} objectives"
        )
    if len(array) == 0:
        value = 0.0
    elif array.shape[1] == 2:
        value = _hypervolume_2d(array, ref)
    else:
        # botorch maximises: negate points and reference point.
        value = Hypervolume(torch.from_numpy(-ref)).compute(torch.from_numpy(-array))
    if ideal is None:
        return float(value)
    box = ref - np.asarray(ideal, dtype=np.float64)
    if box.shape != ref.shape or (box <= 0).any():
        raise ValueError(
            f"ideal point {list(ideal)} must be strictly better than ref {ref.tolist()}"
        )
    return float(value / np.prod(box))


def segment_indices(bits, n_segments: int, bit_range: tuple[float, float] | None = None):
    """Segment of each point when ``bit_range`` (default: observed min..max) is cut into
    ``n_segments`` equal contiguous pieces; points outside the range go to the end segments."""
    bits = np.asarray(bits, dtype=np.float64)
    if n_segments < 1:
        raise ValueError(f"n_segments must be at least 1, got {n_segments}")
    low, high = (bits.min(), bits.max()) if bit_range is None else map(float, bit_range)
    if high < low:
        raise ValueError(f"bit_range {bit_range} is empty (high < low)")
    if high == low:
        return np.zeros(len(bits), dtype=np.int64)
    width = (high - low) / n_segments
    return np.clip(np.floor((bits - low) / width), 0, n_segments - 1).astype(np.int64)


def segmented_pareto_filter(
    bits, losses, n_segments: int = 40, bit_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Indices (ascending) of the points non-dominated within their bit segment.

    The union over segments keeps a spread of configurations along the whole bit range
    (a plain front could collapse onto a few bit-widths), and it always contains the global
    front, since a globally non-dominated point is non-dominated within its segment too.
    """
    bits = np.asarray(bits, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if bits.shape != losses.shape or bits.ndim != 1:
        raise ValueError(f"bits {bits.shape} and losses {losses.shape} must be equal-length 1-D")
    if len(bits) == 0:
        return np.zeros(0, dtype=np.int64)
    segment = segment_indices(bits, n_segments, bit_range)
    kept = []
    for s in np.unique(segment):
        members = np.flatnonzero(segment == s)
        mask = pareto_mask(np.stack([losses[members], bits[members]], axis=1))
        kept.extend(members[mask].tolist())
    return np.array(sorted(kept), dtype=np.int64)
