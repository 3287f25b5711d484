"""Intervals over training seeds and test samples (``coalora.verdicts.stats``): coverage on simulated
records with a known effect, no wins from a zero effect, and per-example recomputation of
each metric against the evaluators' own definitions."""

import math

import numpy as np
import pytest
from scipy.special import expit

from coalora.evaluate.classification import classification_metrics
from coalora.verdicts.stats import (
    bootstrap_weights,
    combine,
    log_ratio_interval,
    metric_under_weights,
    resampled_values,
)


def simulated_records(rng, logit_a, logit_b, seed_sd, n_seeds, n_examples):
    """Two methods evaluated on one shared test sample (example difficulty z_i) at each seed;
    a seed shifts a method's logit by N(0, seed_sd). Returns the per-seed effect matrix."""
    z = rng.standard_normal(n_examples)
    records = {}
    for method, logit in (("a", logit_a), ("b", logit_b)):
        for seed in range(n_seeds):
            correct = rng.random(n_examples) < expit(logit + seed_sd * rng.standard_normal() - z)
            records[method, seed] = {
                "value": correct.mean(),
                "per_example": {
                    "predictions": "".join("1" if c else "0" for c in correct),
                    "labels": "1" * n_examples,
                },
            }
    keys = list(records)
    values = resampled_values([records[k] for k in keys], "accuracy", replicates=200,
                              seed=int(rng.integers(2**31)))  # fmt: skip
    row = {k: i for i, k in enumerate(keys)}
    return np.array([values[row["a", s]] - values[row["b", s]] for s in range(n_seeds)])


def true_effect(logit_a, logit_b, seed_sd, rng, n=400_000):
    """The population effect: expected accuracy difference over examples and seeds."""
    z, u = rng.standard_normal(n), seed_sd * rng.standard_normal(n)
    return float(np.mean(expit(logit_a + u - z)) - np.mean(expit(logit_b + u - z)))


@pytest.mark.parametrize("seed_sd", [0.15, 0.4])
def test_interval_covers_the_true_effect_at_close_to_its_nominal_rate(seed_sd):
    rng = np.random.default_rng(7)
    truth = true_effect(1.2, 1.0, seed_sd, rng)
    intervals = [combine(simulated_records(rng, 1.2, 1.0, seed_sd, 3, 400)) for _ in range(300)]
    coverage = np.mean([i.low <= truth <= i.high for i in intervals])
    assert 0.88 <= coverage <= 0.99, coverage
    assert all(i.noise == "3 seeds + test samples" for i in intervals)


def test_a_zero_effect_is_rarely_called_a_win():
    rng = np.random.default_rng(3)
    intervals = [combine(simulated_records(rng, 1.0, 1.0, 0.2, 3, 400)) for _ in range(300)]
    wins = np.mean([i.low > 0 for i in intervals])
    assert wins <= 0.05, wins  # nominally 2.5%


def test_what_one_seed_or_no_outcomes_can_say():
    one_seed = combine(np.array([[0.03, 0.01, 0.05, 0.02, 0.04]]))
    assert one_seed.decided and "1 seed: seed variance not counted" in one_seed.noise
    assert not one_seed.counts_seeds  # shown, but too narrow to carry a verdict
    assert one_seed.se_seed == 0 and one_seed.se_test > 0
    seeds_only = combine(np.array([[0.03], [0.05], [0.01]]))
    assert seeds_only.counts_seeds and seeds_only.noise.startswith("3 seeds (test-sample noise not")
    # t with 2 degrees of freedom: mean 0.03, sd 0.02 -> half-width 4.303 * 0.02 / sqrt(3)
    assert seeds_only.high - 0.03 == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    single = combine(np.array([[0.03]]))
    assert not single.decided and single.noise.startswith("single measurement")


def test_time_ratios_are_combined_on_the_log_scale():
    interval = log_ratio_interval([0.5, 0.6, 0.55])
    assert interval.effect == pytest.approx(math.exp(np.mean(np.log([0.5, 0.6, 0.55]))))
    assert interval.low < interval.effect < interval.high < 1
    with pytest.raises(ValueError, match="positive"):
        log_ratio_interval([0.5, 0.0])


@pytest.mark.parametrize("num_labels", [2, 3])
def test_metrics_under_weights_match_the_evaluators_definitions(num_labels):
    rng = np.random.default_rng(num_labels)
    labels = rng.integers(0, num_labels, 60)
    predictions = np.where(rng.random(60) < 0.7, labels, rng.integers(0, num_labels, 60))
    per_example = {
        "predictions": "".join(map(str, predictions)),
        "labels": "".join(map(str, labels)),
    }
    weights = bootstrap_weights(60, 5, seed=1)
    assert (weights[0] == 1).all() and (weights.sum(axis=1) == 60).all()
    for metric in ("accuracy", "f1"):
        values = metric_under_weights(per_example, metric, weights, num_labels)
        for row, w in zip(values, weights, strict=True):
            index = np.repeat(np.arange(60), w.astype(int))  # the resampled test set itself
            expected = classification_metrics(
                predictions[index].tolist(), labels[index].tolist(), num_labels
            )[metric]
            assert row == pytest.approx(expected)


def test_perplexity_under_weights_is_exp_of_the_weighted_window_nll():
    per_example = {"window_nll": [1.0, 2.0, 4.0]}
    weights = np.array([[1, 1, 1], [3, 0, 0], [0, 1, 2]], dtype=float)
    values = metric_under_weights(per_example, "perplexity", weights)
    assert values == pytest.approx([math.exp(7 / 3), math.e, math.exp(10 / 3)])


def test_records_on_different_examples_are_not_resampled_together():
    a = {"value": 0.5, "per_example": {"predictions": "10", "labels": "11"}}
    b = {"value": 0.5, "per_example": {"predictions": "10", "labels": "10"}}
    assert resampled_values([a, b], "accuracy").shape == (2, 1)  # recorded values only
    assert resampled_values([a, dict(a)], "accuracy", replicates=10).shape == (2, 11)


def test_one_seed_intervals_undercover_when_seeds_matter():
    """Why one seed gives no verdict: its interval (test samples only) misses the truth far
    more often than 5% when the seed moves the result."""
    rng = np.random.default_rng(11)
    truth = true_effect(1.2, 1.0, 0.4, rng)
    intervals = [combine(simulated_records(rng, 1.2, 1.0, 0.4, 1, 400)) for _ in range(200)]
    coverage = np.mean([i.low <= truth <= i.high for i in intervals])
    assert coverage < 0.85, coverage
