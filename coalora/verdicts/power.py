"""What deciding a test would take: the seeds and test examples, and their price.

A test's interval (``coalora.verdicts.stats``) is ``D +- sqrt(t_{S-1}^2 var_seed / S +
t_{n-1}^2 var_test / n)``: the seed part shrinks with the seeds S, the test part with the
test examples n (every seed is evaluated on the same examples, so test noise does not
average out over seeds). From
one run's estimates of the two components (``Components``: ``var_seed = se_seed^2 * S`` and
``var_test = se_test^2 * n``, the per-example test variance) the planner finds the cheapest
design (S in ``MIN_SEEDS``..``max_seeds``, n up to the test examples there are) at which the
interval decides the test with the wanted power if the true effect is ``effect``:

- ``greater`` / ``less`` a threshold: the interval lies wholly on the effect's side of it
  (holds if the effect is on the claimed side, contradicted otherwise);
- ``within`` a margin: wholly inside (-margin, margin) when the effect is inside, wholly
  beyond it on the effect's side when it is outside.

Power is the chance that the interval, built as ``stats.half_width`` builds it at the planned
design, lies wholly on one side: the estimate is normal around the effect, and the seed part
of the half-width is estimated from S seeds (a scaled chi-square with S - 1 degrees of
freedom, independent of the estimate), over which the chance is averaged (``SEED_NODES``
quantiles). For ``within`` the interval must clear both bounds; at a given half-width that
is ``P(a) + P(b) - 1`` exactly. ``tests/test_claims.py`` checks the plans by simulation.

The price is in core-seconds on the machine that ran the records (each job runs one thread
unless configured otherwise): per seed the compared runs' training seconds, their records'
setup seconds and their evaluation seconds scaled to n examples.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ..report import run_totals_per_seed
from .stats import CONFIDENCE, MIN_SEEDS, example_count, half_width

POWER = 0.8
MAX_SEEDS = 64
# The smallest test size the grid offers (unless fewer were measured): below ~100 examples
# the normal approximation behind the test-sample part of the interval wears thin.
MIN_EXAMPLES = 100
EXAMPLE_GRID = 160  # test sizes tried, log-spaced between MIN_EXAMPLES and the maximum
SEED_NODES = 64  # quantiles of the seed variance's chi-square that power averages over


SECONDS = ("train_seconds", "setup_seconds", "eval_seconds")


def on_interval_scale(value: float, statistic: str) -> float:
    """An effect or threshold of a claims test on its interval's scale: time ratios are
    combined as logs (``stats.log_ratio_interval``), every other statistic as it is."""
    return math.log(value) if statistic == "time_ratio" else value


@dataclass(frozen=True)
class Components:
    """One comparison's noise and cost, as measured (``Components.of`` from an interval)."""

    var_seed: float  # variance of one seed's effect
    var_test: float  # test-sample variance per example (0: no test sample, e.g. times)
    n_test: int  # test examples the effect was measured on (0: none)
    max_test: int  # test examples there are (the test split, capped)
    train_seconds: float = 0.0  # per seed: the compared runs' fine-tuning
    setup_seconds: float = 0.0  # per seed: their records' setup (independent of n)
    eval_seconds: float = 0.0  # per seed: their records' evaluation at n_test examples

    @classmethod
    def of(cls, interval, n_test: int, max_test: int, **seconds) -> Components:
        """From an ``Interval`` (``se_seed`` and ``se_test`` over ``n_seeds`` seeds)."""
        return cls(
            interval.se_seed**2 * interval.n_seeds,
            interval.se_test**2 * n_test if n_test else 0.0,
            n_test,
            max(max_test, n_test),
            **seconds,
        )

    @classmethod
    def from_row(cls, row) -> Components:
        """From a row of the claims table (``claims.csv``: ``se_seed``, ``se_test``,
        ``n_seeds``, ``n_test``, ``max_test`` and the per-seed seconds)."""
        n_test = int(row["n_test"])
        return cls(
            float(row["se_seed"]) ** 2 * int(row["n_seeds"]),
            float(row["se_test"]) ** 2 * n_test if n_test else 0.0,
            n_test,
            max(int(row["max_test"]), n_test),
            **{name: float(row[name]) for name in SECONDS},
        )

    def core_seconds(self, seeds, examples):
        eval_part = self.eval_seconds * np.asarray(examples) / self.n_test if self.n_test else 0.0
        return np.asarray(seeds) * (self.train_seconds + self.setup_seconds + eval_part)


@dataclass(frozen=True)
class Plan:
    """The cheapest design that decides a test with ``power`` (None: none within the caps,
    ``why`` says so)."""

    seeds: int | None
    test_examples: int | None
    core_seconds: float | None
    power: float  # at the plan, or the best within the caps
    why: str = ""

    @property
    def decidable(self) -> bool:
        return self.seeds is not None

    def text(self) -> str:
        if not self.decidable:
            return self.why
        examples = f" x {self.test_examples:,} test examples" if self.test_examples else ""
        return f"{self.seeds} seeds{examples}, {self.core_seconds:,.0f} core-s"


def power(
    components: Components, effect: float, relation: str, threshold: float, seeds, examples,
    confidence: float = CONFIDENCE,
):  # fmt: skip
    """The probability that the interval decides the test at ``seeds`` x ``examples`` (arrays
    broadcast) if the true effect is ``effect``; see the module docstring."""
    seeds = np.asarray(seeds, float)[..., None]  # the last axis: the seed variance's nodes
    se_seed2 = components.var_seed / seeds
    examples = np.maximum(np.asarray(examples, float), 1.0)[..., None]
    se_test2 = components.var_test / examples
    se = np.sqrt(se_seed2 + se_test2)
    df = np.maximum(seeds - 1, 1.0)
    nodes = (np.arange(SEED_NODES) + 0.5) / SEED_NODES
    seed2 = se_seed2 * scipy_stats.chi2.ppf(nodes, df) / df
    half = half_width(seed2, se_test2, seeds, confidence, n_test=examples)

    def one_sided(distance):  # P(the estimate clears a bound at ``distance``), per node
        beyond = np.where(distance > half, np.inf, -np.inf)  # no noise: it does or it does not
        return scipy_stats.norm.cdf(np.divide(distance - half, se, out=beyond, where=se > 0))

    if relation in ("greater", "less"):
        decided = one_sided(abs(effect - threshold))
    elif relation == "within":
        if abs(effect) >= threshold:
            decided = one_sided(abs(effect) - threshold)
        else:
            both = one_sided(threshold + effect) + one_sided(threshold - effect) - 1.0
            decided = np.clip(both, 0.0, 1.0)
    else:
        raise ValueError(f"unknown relation {relation!r}")
    return decided.mean(axis=-1)


def plan(
    components: Components, effect: float, relation: str, threshold: float, *,
    target: float = POWER, max_seeds: int = MAX_SEEDS, confidence: float = CONFIDENCE,
) -> Plan:  # fmt: skip
    """The cheapest (seeds, test examples) in ``MIN_SEEDS``..``max_seeds`` x up to
    ``components.max_test`` at which the test is decided with probability ``target`` if the
    effect is ``effect`` (``components``: a ``Components`` or a claims-table row). ``effect``
    and ``threshold`` on the interval's scale: log ratios for time ratios."""
    if not isinstance(components, Components):
        components = Components.from_row(components)
    if not math.isfinite(effect):
        return Plan(None, None, None, math.nan, "no effect to plan for")
    if components.var_seed <= 0 and components.var_test <= 0:
        return Plan(
            None, None, None, math.nan,
            "no noise measured (the same effect at every seed and test resampling)",
        )  # fmt: skip
    seeds = np.arange(MIN_SEEDS, max_seeds + 1)[:, None]
    if components.var_test > 0:
        low = max(min(MIN_EXAMPLES, components.n_test, components.max_test), 1)
        grid = np.geomspace(low, components.max_test, EXAMPLE_GRID).round().astype(int)
        examples = np.unique(np.append(grid, components.n_test))
        examples = examples[examples <= components.max_test][None, :]
    else:  # the test size does not move the interval: keep the measured one
        examples = np.array([[components.n_test]])
    achieved = power(components, effect, relation, threshold, seeds, examples, confidence)
    cost = np.broadcast_to(components.core_seconds(seeds, examples), achieved.shape)
    enough = achieved >= target
    if not enough.any():
        best = float(np.nanmax(achieved))
        size = f" x {examples.max():,} test examples" if components.n_test else ""
        return Plan(
            None, None, None, best,
            f"not decidable at this scale (power {best:.2f} at {max_seeds} seeds{size})",
        )  # fmt: skip
    i, j = np.unravel_index(np.argmin(np.where(enough, cost, np.inf)), cost.shape)
    n = int(examples[0, j]) if components.n_test else 0
    return Plan(int(seeds[i, 0]), n, float(cost[i, j]), float(achieved[i, j]))


# --------------------------------------------------------------------------- from records


def measured_examples(rows: pd.DataFrame) -> int:
    """The test examples (or perplexity windows) the records were evaluated on (0: none)."""
    sizes = rows["per_example"].map(example_count) if "per_example" in rows else []
    return int(max(sizes, default=0))


@functools.cache
def _split_size(task: str) -> int | None:
    """The task's test split size, loaded (None where it cannot be loaded here)."""
    from ..data import load_task

    try:
        return load_task(task).sizes["test"]
    except Exception:  # noqa: BLE001 - the size only bounds a plan; without it the cap does
        return None


def available_examples(rows: pd.DataFrame, cap: int) -> int:
    """The test examples a plan may use: the whole test split (perplexity: the windows the
    test text holds, from the records' protocol; classification: the split, from the records
    when they evaluated all of it, else loaded), at most ``cap``."""
    protocol = next((p for p in rows["protocol"] if isinstance(p, dict)), {})
    ppl = protocol.get("perplexity") or {}
    if ppl.get("total_tokens") and ppl.get("window"):
        size = int(ppl["total_tokens"]) // int(ppl["window"])
    elif protocol.get("n_examples") and not protocol.get("limit"):
        size = int(protocol["n_examples"])
    else:
        size = _split_size(str(rows["task"].iloc[0])) or cap
    return min(size, cap)


def seconds_per_seed(rows: pd.DataFrame, seeds, evaluations: bool = True) -> dict:
    """Mean over ``seeds`` of one seed's training seconds (one per distinct checkpoint),
    setup seconds and evaluation seconds (summed over its records): ``Components``' costs."""
    rows = rows[rows["seed"].isin(seeds)]
    n = max(len(seeds), 1)
    return {
        "train_seconds": float(run_totals_per_seed(rows).sum()) / n,
        "setup_seconds": float(rows["setup_seconds"].sum()) / n if evaluations else 0.0,
        "eval_seconds": float(rows["eval_seconds"].sum()) / n if evaluations else 0.0,
    }
