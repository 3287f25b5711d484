"""Effects with 95% intervals that count both sources of noise: training seeds and test samples.

A comparison (CoA-LoRA against QLoRA, say) is computed once per training seed from that
seed's evaluation records, giving per-seed effects ``d_s``; the reported effect is their mean
``D``. Two things would change ``D`` if the experiment were run again:

- **the training seed** (initialisation, data order, search): estimated from the spread of
  the ``d_s``, ``se_seed^2 = var(d_s) / S`` (sample variance, S seeds);
- **the test sample** (which examples or perplexity windows happened to be in the test
  split): estimated by a paired bootstrap. Every replicate draws the test examples with
  replacement ONCE and applies the same draw to every record being compared (all methods,
  configurations and seeds evaluated the same examples, in the same order), recomputes
  every metric from the per-example outcomes, then the per-seed effects and ``D``;
  ``se_test^2`` is the variance of ``D`` over replicates.

The interval is ``D +- sqrt((t * se_seed)^2 + (z * se_test)^2)``: each source of noise
gets its own 95% quantile, ``t`` with S - 1 degrees of freedom for the seed part (estimated
from S values) and the normal ``z`` for the test part (a bootstrap over hundreds of examples
knows its variance well). The half-width lies between ``z`` and ``t`` times ``sqrt(se_seed^2
+ se_test^2)``; where seeds dominate it is the seeds' own t interval, however well two seeds
happen to agree. Welch-Satterthwaite degrees of freedom (the interval used before) fall
short there: when the seeds agree by chance the degrees of freedom grow, ``t`` falls towards
``z``, and the interval covered the truth less often than 95% at 2, 3 and 4 seeds.
``tests/test_stats.py`` simulates records with a known effect over 2-6 seeds and
seed-to-test variance ratios 0.1-10 and checks at least 94% coverage wherever a verdict may
be given (``MIN_SEEDS`` seeds or more); ``docs/claims.md`` has the tables. The per-seed
spread already carries each seed's own test noise, which the bootstrap counts too: the
interval errs wide.

With one seed the seed part cannot be estimated and is left out (``noise`` says so, and the
claims give no verdict on such an interval: it covers the truth far less often than 95%
when seeds matter); without per-example outcomes the test part is left out; with neither the
effect is a single measurement and has no interval. Ratios (training times) are taken on the
log scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
BOOTSTRAP_REPLICATES = 1000
# The fewest seeds whose interval may carry a verdict (claims, the planners): one seed has no
# seed-to-seed spread; from two the interval keeps its 95% (``tests/test_stats.py``).
MIN_SEEDS = 2


@dataclass(frozen=True)
class Interval:
    """An effect and its 95% interval (``low``/``high`` NaN for a single measurement)."""

    effect: float
    low: float
    high: float
    n_seeds: int
    se_seed: float
    se_test: float
    noise: str  # which sources the interval counts, in words

    @property
    def decided(self) -> bool:
        """An interval exists (it may count test samples only)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def counts_seeds(self) -> bool:
        """The interval counts seed-to-seed variance (``MIN_SEEDS`` seeds or more): only such
        an interval may carry a verdict (with one seed it covers a true effect far less often
        than it claims; see ``tests/test_stats.py``)."""
        return self.decided and self.n_seeds >= MIN_SEEDS


def noise_sources(n_seeds: int, resampled: bool) -> str:
    if n_seeds > 1 and resampled:
        return f"{n_seeds} seeds + test samples"
    if n_seeds > 1:
        return f"{n_seeds} seeds (test-sample noise not counted)"
    if resampled:
        return "test samples only (1 seed: seed variance not counted, no verdict)"
    return "single measurement (1 seed, no per-example outcomes)"


def combine(per_seed: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The interval from per-seed effects under each test resampling.

    ``per_seed`` has shape (S, 1 + B): column 0 the effects on the observed test sample,
    columns 1.. the same effects under B paired bootstrap draws (B = 0: no resampling)."""
    per_seed = np.asarray(per_seed, dtype=float)
    if per_seed.ndim != 2 or per_seed.shape[0] < 1 or per_seed.shape[1] < 1:
        raise ValueError(f"per-seed effects must be (seeds, 1 + replicates), got {per_seed.shape}")
    n_seeds, columns = per_seed.shape
    effect = float(per_seed[:, 0].mean())
    resampled = columns > 1
    se_seed2 = float(per_seed[:, 0].var(ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    se_test2 = float(per_seed[:, 1:].mean(axis=0).var(ddof=1)) if resampled else 0.0
    return interval_from_components(effect, se_seed2, se_test2, n_seeds, resampled, confidence)


def half_width(se_seed2, se_test2, n_seeds, confidence: float = CONFIDENCE):
    """The interval's half-width: ``sqrt((t * se_seed)^2 + (z * se_test)^2)``, ``t`` with
    ``n_seeds - 1`` degrees of freedom, ``z`` normal (the module docstring). Works on arrays
    too (the planners, ``coalora.verdicts.power`` and ``seedplan``, evaluate it over many
    designs and simulated runs)."""
    level = 0.5 + confidence / 2
    df = np.maximum(np.asarray(n_seeds, float) - 1, 1.0)  # one seed: no seed part to scale
    t, z = scipy_stats.t.ppf(level, df), scipy_stats.norm.ppf(level)
    return np.sqrt(t**2 * np.asarray(se_seed2, float) + z**2 * np.asarray(se_test2, float))


def interval_from_components(
    effect: float,
    se_seed2: float,
    se_test2: float,
    n_seeds: int,
    resampled: bool,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The interval from the effect and its two squared standard errors (``combine``'s last
    step; the power check in ``tests/test_claims.py`` builds intervals with it too)."""
    variance = se_seed2 + se_test2
    noise = noise_sources(n_seeds, resampled)
    if not (n_seeds > 1 or resampled) or not math.isfinite(variance):
        return Interval(effect, math.nan, math.nan, n_seeds, 0.0, 0.0, noise)
    half = float(half_width(se_seed2, se_test2, n_seeds, confidence))
    return Interval(
        effect, effect - half, effect + half, n_seeds, math.sqrt(se_seed2), math.sqrt(se_test2),
        noise,
    )  # fmt: skip


def log_ratio_interval(per_seed_ratios: Sequence[float], confidence: float = CONFIDENCE):
    """A ratio's interval over seeds (log scale, back-transformed): training times, which
    have no test sample."""
    ratios = np.asarray(per_seed_ratios, dtype=float)
    if (ratios <= 0).any():
        raise ValueError(f"ratios must be positive, got {ratios.tolist()}")
    interval = combine(np.log(ratios)[:, None], confidence)
    return Interval(
        math.exp(interval.effect),
        math.exp(interval.low) if interval.decided else math.nan,
        math.exp(interval.high) if interval.decided else math.nan,
        interval.n_seeds, interval.se_seed, 0.0, interval.noise,
    )  # fmt: skip


# --------------------------------------------------------------------------- resampling


def bootstrap_weights(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """(1 + replicates, n) example counts: row 0 all ones (the observed sample), then paired
    bootstrap draws (multinomial counts of n draws with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates) if replicates else []
    return np.vstack([np.ones((1, n)), np.asarray(draws, dtype=float).reshape(-1, n)])


def _f1(predicted: np.ndarray, labels: np.ndarray, cls: int, weights: np.ndarray):
    tp = weights @ ((predicted == cls) & (labels == cls)).astype(float)
    fp = weights @ ((predicted == cls) & (labels != cls)).astype(float)
    fn = weights @ ((predicted != cls) & (labels == cls)).astype(float)
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def metric_under_weights(
    per_example: dict, metric: str, weights: np.ndarray, num_labels: int | None = None
) -> np.ndarray:
    """A record's primary metric recomputed under each row of example ``weights``.

    ``per_example`` as in the results schema; ``metric`` accuracy, f1 (binary F1 of class 1
    for two labels, else macro, as ``coalora.evaluate.classification``) or perplexity."""
    if "window_nll" in per_example:
        if metric != "perplexity":
            raise ValueError(f"per-window NLLs give perplexity, not {metric!r}")
        nll = np.asarray(per_example["window_nll"], dtype=float)
        return np.exp(weights @ nll / weights.sum(axis=1))
    predicted = np.frombuffer(per_example["predictions"].encode(), dtype=np.uint8) - 48
    labels = np.frombuffer(per_example["labels"].encode(), dtype=np.uint8) - 48
    if metric == "accuracy":
        return weights @ (predicted == labels).astype(float) / weights.sum(axis=1)
    if metric == "f1":
        classes = num_labels or int(max(predicted.max(), labels.max())) + 1
        if classes <= 2:
            return _f1(predicted, labels, 1, weights)
        return np.mean([_f1(predicted, labels, c, weights) for c in range(classes)], axis=0)
    raise ValueError(f"no per-example recomputation for metric {metric!r}")


def per_example_key(per_example: dict | None):
    """What must agree for two records to be resampled together: the labels (classification)
    or the number of windows (language modelling)."""
    if not per_example:
        return None
    if "window_nll" in per_example:
        return ("windows", len(per_example["window_nll"]))
    return ("labels", per_example["labels"])


def resampled_values(
    records: Sequence[dict], metric: str, replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0
) -> np.ndarray:
    """(len(records), 1 + B) primary-metric values: column 0 as recorded, then under B paired
    bootstrap draws of the test examples shared by every record. B is 0 (one column, the
    recorded values) when a record has no per-example outcomes or they differ in examples."""
    observed = np.array([float(r["value"]) for r in records])[:, None]
    keys = {per_example_key(r.get("per_example")) for r in records}
    if not records or None in keys or len(keys) != 1 or replicates == 0:
        return observed
    n = len(records[0]["per_example"].get("window_nll") or records[0]["per_example"]["labels"])
    weights = bootstrap_weights(n, replicates, seed)
    values = np.vstack(
        [metric_under_weights(r["per_example"], metric, weights[1:]) for r in records]
    )
    return np.hstack([observed, values])


def interval_of(
    effect_at: Callable[[int, np.ndarray], float], seeds: Sequence[int], columns: int
) -> Interval:
    """Evaluate ``effect_at(seed, column)`` for every seed and value column (0: observed,
    1..: bootstrap replicates) and combine (``combine``)."""
    per_seed = np.array([[effect_at(s, c) for c in range(columns)] for s in seeds], dtype=float)
    return combine(per_seed)
