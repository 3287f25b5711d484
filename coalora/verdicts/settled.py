"""Trained far enough? Each claim test against its own learning curve.

Every run keeps evaluable snapshots at fixed fractions of its optimizer steps (the same for
every method; ``coalora.train.snapshot_plan``), evaluated on the same test examples as its
final records (``curve/<snapshot>/`` beside ``eval/``). ``at_snapshot`` rebuilds the records
as they stood at one snapshot, so the claims can be computed there exactly as at the end
(``claims.snapshot_effects``: each test's effect and interval at every snapshot).

**The settled gate.** A comparison can still be moving when training stops: between 8 and 48
steps every method's perplexity on the embedded default halved and the CoA-LoRA vs QLoRA gap
moved by more than 10, while between 48 and 96 the perplexities still fell 9-13% but the gap
moved by about 3. What a claim is about is the comparison, not the absolute metric, so the
gate looks at the comparison: per seed, the test's effect at the end minus its effect at the
half-way snapshot (``claims.yaml``: ``settled.snapshot``), under the same paired bootstrap
draws of the test examples; the interval of that change is built as the claims build theirs
(``stats.combine``: seeds + test samples). *Settled*: the interval lies inside +- the
statistic's tolerance (a margin fixed before any result: ``settled.tolerance``); *still
moving* otherwise, which includes "too noisy to tell": settling must be shown, not assumed.

**The decaying learning rate.** Runs decay the rate linearly to 0, so the half-way snapshot
was taken at about half the peak rate: it has not annealed, and its metric is worse than a
model trained to that point with a finished schedule would be. The gate allows for it by
what it compares: both sides of a test are at the same step of the same schedule, so an
annealing gain common to every method cancels in the effect, and what is left of it (one
method gaining more from the anneal) is a real movement of the comparison, which the gate
should and does count. The un-annealed snapshot's extra noise enters the per-seed changes,
so it widens the interval: it can make a test read *still moving*, never *settled*.
``tests/test_settled.py`` checks both on constructed records: a comparison that moves is
caught, and one that holds while every method's metric still improves is settled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import Interval, combine

SETTLED, STILL_MOVING, NOT_GATED = "settled", "still moving", "not gated"
NO_CURVE = "no curve"  # no half-way snapshot records (a run without snapshots)
TRAINED_STATES = (SETTLED, STILL_MOVING, NOT_GATED, NO_CURVE)
# The claims table's columns of the gate's change interval (what the seed planner replays).
SETTLING_COLUMNS = [
    "moved", "moved_low", "moved_high", "moved_tolerance", "moved_se_seed", "moved_se_test",
    "moved_n_seeds",
]  # fmt: skip


def snapshot_of(protocol) -> dict:
    """A record's snapshot ({"step", "of", "fraction"}; empty for a final record)."""
    return (protocol or {}).get("snapshot") or {} if isinstance(protocol, dict) else {}


def snapshot_fractions(curves: pd.DataFrame | None) -> list[float]:
    if curves is None or curves.empty:
        return []
    return sorted({snapshot_of(p).get("fraction") for p in curves["protocol"]} - {None})


def at_snapshot(results: pd.DataFrame, curves: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The records as they stood at one snapshot: every trained run's records replaced by its
    records at ``fraction`` of its steps; rows that trained nothing (the unadapted base) kept."""
    fractions = curves["protocol"].map(lambda p: snapshot_of(p).get("fraction"))
    snap = curves[np.isclose(fractions.astype(float), fraction)]
    untrained = results[results["train_steps"].isna()]
    return pd.concat([untrained, snap], ignore_index=True)


@dataclass(frozen=True)
class Settling:
    """One test's settled gate: its state and the change it rests on."""

    state: str
    change: Interval | None = None
    tolerance: float = math.nan
    steps: str = ""  # e.g. "4 -> 8" (the half-way snapshot's step, the end's)

    def columns(self) -> dict:
        """The change interval as claims-table columns (NaN where there is none)."""
        c = self.change
        if c is None:
            return dict.fromkeys(SETTLING_COLUMNS, math.nan)
        values = [c.effect, c.low, c.high, self.tolerance, c.se_seed, c.se_test, c.n_seeds]
        return dict(zip(SETTLING_COLUMNS, values, strict=True))

    def text(self) -> str:
        if self.state == NOT_GATED:
            return NOT_GATED
        if self.state == NO_CURVE:
            return "no half-way snapshot: whether training settled is unknown"
        c = self.change
        moved = f"{c.effect:+.3g} [{c.low:.3g}, {c.high:.3g}]" if c.counts_seeds else "no interval"
        where = "inside" if self.state == SETTLED else "not inside"
        return f"{self.state}: half-way to end ({self.steps} steps) {moved}, {where} +-{self.tolerance:g}"


def settle(
    final: np.ndarray, half: np.ndarray, tolerance: float, steps: str, n_test: int | None = None
) -> Settling:
    """The gate on per-seed effect matrices (seeds x 1 + bootstrap columns of ``n_test``
    examples, as ``stats.combine`` takes them) at the end and at the half-way snapshot, seeds
    in one order."""
    final, half = np.asarray(final, float), np.asarray(half, float)
    if final.shape != half.shape:  # one side has no per-example outcomes: observed only
        final, half = final[:, :1], half[:, :1]
    change = combine(final - half, n_test=n_test)
    inside = change.counts_seeds and -tolerance < change.low and change.high < tolerance
    return Settling(SETTLED if inside else STILL_MOVING, change, tolerance, steps)


def steps_text(rows: pd.DataFrame, half_rows: pd.DataFrame) -> str:
    """ "<half-way step> -> <last step>" of the compared runs (several: joined by /)."""

    def listed(frame):
        return "/".join(str(int(s)) for s in sorted(set(frame["train_steps"].dropna())))

    return f"{listed(half_rows)} -> {listed(rows)}"


def _exposures(rows: pd.DataFrame) -> list[dict]:
    """The records' ``exposure`` objects (records without one left out)."""
    return [e for e in rows.get("exposure", pd.Series(dtype=object)) if isinstance(e, dict)]


def exposure_text(name: str, rows: pd.DataFrame) -> str:
    """One side's exposure over its records: steps that trained on the evaluated
    configuration out of the run's steps (mean over configurations and seeds), and the same
    weighted by learning rate and loss share (``coalora.train.exposure``)."""
    found = _exposures(rows)
    if not found:
        return f"{name}: exposure not recorded"
    steps, of, lr_steps, lr_of = (
        np.mean([e[k] for e in found]) for k in ("steps", "of", "lr_steps", "lr_of")
    )
    return f"{name}: {steps:.3g} of {of:.3g} steps (lr-weighted {lr_steps:.3g} of {lr_of:.3g})"


def exposure_share(rows: pd.DataFrame) -> float:
    """The mean share of its run's steps a side's records trained on their configuration."""
    shares = [e["steps"] / e["of"] for e in _exposures(rows) if e["of"]]
    return float(np.mean(shares)) if shares else math.nan
