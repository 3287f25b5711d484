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
  ``se_test^2`` is the variance of ``D`` over replicates (corrected below).

The interval is ``D +- sqrt((t_seed * se_seed)^2 + (t_test * se_test)^2)``: each source of
noise gets its own 95% quantile, ``t_seed`` with S - 1 degrees of freedom for the seed part
(estimated from S values) and ``t_test`` with n - 1 for the test part (estimated from the n
examples or windows the bootstrap resamples; the normal ``z`` where n is not known, which
t_{n-1} approaches for hundreds of examples). The bootstrap variance of a mean of n values
is ``(n - 1) / n`` times the usual ``s^2 / n``, so ``se_test^2`` is the bootstrap's variance
times ``n / (n - 1)``: for a mean the test part is then Student's interval exactly. With the
8 perplexity windows of the embedded default ``z`` and the bootstrap's variance covered the
truth 91-93% of the time at 4-7 seeds where test noise dominates; ``t_{n-1}`` alone brings
the simulated regimes to 95%, but for a plain mean of n = 8 test-only differences it keeps
only 93.7% (``2 F_7(t_7 sqrt(7/8)) - 1``), the correction restores 95.0%. The half-width
lies between the smaller and the larger quantile times ``sqrt(se_seed^2 + se_test^2)``;
where seeds dominate it is the seeds' own t interval, however well two seeds happen to
agree. Welch-Satterthwaite degrees of freedom (the interval used before) fall short there:
when the seeds agree by chance the degrees of freedom grow, ``t`` falls towards ``z``, and
the interval covered the truth less often than 95% at 2, 3 and 4 seeds.
``tests/test_stats.py`` simulates records with a known effect over 2-6 seeds (2-7 with 8
and 32 perplexity windows) and seed-to-test variance ratios 0.1-10 and checks at least 94%
coverage wherever a verdict may be given (``MIN_SEEDS`` seeds or more); ``docs/claims.md``
has the tables. The per-seed spread already carries each seed's own test noise, which the
bootstrap counts too: the interval errs wide.

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


def combine(
    per_seed: np.ndarray, confidence: float = CONFIDENCE, n_test: int | None = None
) -> Interval:
    """The interval from per-seed effects under each test resampling.

    ``per_seed`` has shape (S, 1 + B): column 0 the effects on the observed test sample,
    columns 1.. the same effects under B paired bootstrap draws (B = 0: no resampling) of
    ``n_test`` examples (None: not known; the test part then has no small-sample
    correction and the normal quantile)."""
    per_seed = np.asarray(per_seed, dtype=float)
    if per_seed.ndim != 2 or per_seed.shape[0] < 1 or per_seed.shape[1] < 1:
        raise ValueError(f"per-seed effects must be (seeds, 1 + replicates), got {per_seed.shape}")
    n_seeds, columns = per_seed.shape
    effect = float(per_seed[:, 0].mean())
    resampled = columns > 1
    se_seed2 = float(per_seed[:, 0].var(ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    se_test2 = float(per_seed[:, 1:].mean(axis=0).var(ddof=1)) if resampled else 0.0
    if n_test is not None and n_test > 1:
        se_test2 *= n_test / (n_test - 1)  # the bootstrap's variance of a mean is (n-1)/n short
    return interval_from_components(
        effect, se_seed2, se_test2, n_seeds, resampled, confidence, n_test
    )


def half_width(se_seed2, se_test2, n_seeds, confidence: float = CONFIDENCE, n_test=None):
    """The interval's half-width: ``sqrt((t_seed * se_seed)^2 + (t_test * se_test)^2)``,
    ``t_seed`` with ``n_seeds - 1`` degrees of freedom, ``t_test`` with ``n_test - 1`` (normal
    where ``n_test`` is None; the module docstring). Works on arrays too (the planners,
    ``coalora.verdicts.power`` and ``seedplan``, evaluate it over many designs and simulated
    runs)."""
    level = 0.5 + confidence / 2
    df = np.maximum(np.asarray(n_seeds, float) - 1, 1.0)  # one seed: no seed part to scale
    t_seed = scipy_stats.t.ppf(level, df)
    if n_test is None:
        t_test = scipy_stats.norm.ppf(level)
    else:  # fewer than two examples leave no test variance to scale
        t_test = scipy_stats.t.ppf(level, np.maximum(np.asarray(n_test, float) - 1, 1.0))
    se_seed2, se_test2 = np.asarray(se_seed2, float), np.asarray(se_test2, float)
    return np.sqrt(t_seed**2 * se_seed2 + t_test**2 * se_test2)


def interval_from_components(
    effect: float,
    se_seed2: float,
    se_test2: float,
    n_seeds: int,
    resampled: bool,
    confidence: float = CONFIDENCE,
    n_test: int | None = None,
) -> Interval:
    """The interval from the effect and its two squared standard errors (``combine``'s last
    step, ``se_test2`` corrected for the bootstrap's bias; the power check in
    ``tests/test_claims.py`` builds intervals with it too) and the test examples ``n_test``."""
    variance = se_seed2 + se_test2
    noise = noise_sources(n_seeds, resampled)
    if not (n_seeds > 1 or resampled) or not math.isfinite(variance):
        return Interval(effect, math.nan, math.nan, n_seeds, 0.0, 0.0, noise)
    half = float(half_width(se_seed2, se_test2, n_seeds, confidence, n_test))
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


def example_count(per_example: dict | None) -> int:
    """The test examples (or perplexity windows) behind a record's per-example outcomes (0:
    none): the n the paired bootstrap resamples."""
    if not isinstance(per_example, dict):
        return 0
    return len(per_example.get("window_nll") or per_example.get("labels") or "")


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
    n = example_count(records[0]["per_example"])
    weights = bootstrap_weights(n, replicates, seed)
    values = np.vstack(
        [metric_under_weights(r["per_example"], metric, weights[1:]) for r in records]
    )
    return np.hstack([observed, values])


def interval_of(
    effect_at: Callable[[int, np.ndarray], float],
    seeds: Sequence[int],
    columns: int,
    n_test: int | None = None,
) -> Interval:
    """Evaluate ``effect_at(seed, column)`` for every seed and value column (0: observed,
    1..: bootstrap replicates of ``n_test`` examples) and combine (``combine``)."""
    per_seed = np.array([[effect_at(s, c) for c in range(columns)] for s in seeds], dtype=float)
    return combine(per_seed, n_test=n_test)
