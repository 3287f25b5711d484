"""The settled gate (``coalora.verdicts.settled``) on constructed perplexity records: a
comparison still moving between the half-way snapshot and the end gives no verdict (and says
what the interval alone would have said); one that holds while every method's perplexity still
falls is settled; exposure is named per side."""

import copy

import numpy as np
import pandas as pd
import pytest

from coalora.evaluate.results import SCHEMA, read_results, write_result
from coalora.verdicts import claims, claims_report, settled
from coalora.verdicts.stats import combine

WINDOWS = 60
CONFIGS = [("b3", 3.0), ("b4", 4.0)]
SEEDS = (0, 1, 2)
STEPS = 40


def sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def lm_records(method, offset, rng, difficulty, *, per_config, exposure_steps):
    """Perplexity records of one method: window NLL = the window's difficulty (shared by every
    method: the same test windows) + the method's offset at the configuration + a seed shift +
    window noise."""
    out = []
    for seed in SEEDS:
        shift = 0.01 * rng.standard_normal()
        for config, bits in CONFIGS:
            nll = difficulty + offset(bits) + shift + 0.02 * rng.standard_normal(WINDOWS)
            out.append({
                "schema": SCHEMA, "model": "tiny-llama", "task": "bible-lm", "method": method,
                "config_name": config, "seen": True, "avg_bits": bits, "budget": bits,
                "quantizer": "nf", "metrics": {"perplexity": float(np.exp(nll.mean()))},
                "per_example": {"window_nll": nll.tolist()},
                "primary_metric": "perplexity", "higher_is_better": False,
                "protocol": {"trained_method": method,
                             "serves": "trained" if per_config else "any",
                             "train_settings": {"r": 4, "seed": seed, "configs_per_step": 2}},
                "hashes": {"qconfig": sha(config), "base_weights": sha("m"),
                           "checkpoint": sha(f"{method}{seed}{config if per_config else ''}")},
                "seed": seed, "train_seconds": 10.0, "train_steps": STEPS,
                "setup_seconds": 0.0, "eval_seconds": 0.0, "packages": {},
                "code_version": "test",
                "exposure": {"steps": exposure_steps, "of": STEPS,
                             "lr_steps": exposure_steps / 2, "lr_of": STEPS / 2},
            })  # fmt: skip
    return out


def run(remaining, seed=0):
    """Final records of CoA-LoRA (5% worse than QLoRA at every budget) and QLoRA, and their
    half-way snapshot records: each method's window NLL ``remaining[method]`` higher, plus
    fresh window noise (a snapshot is a model of its own)."""
    rng = np.random.default_rng(seed)
    difficulty = 3.5 + 0.3 * rng.standard_normal(WINDOWS)
    final = lm_records("coalora", lambda b: 0.05 + 0.3 * (4 - b), rng, difficulty,
                       per_config=False, exposure_steps=16) + lm_records(
        "qlora", lambda b: 0.3 * (4 - b), rng, difficulty, per_config=True, exposure_steps=STEPS
    )  # fmt: skip
    half = []
    for record in final:
        snap = copy.deepcopy(record)
        nll = np.asarray(snap["per_example"]["window_nll"])
        nll = nll + remaining[record["method"]] + 0.005 * rng.standard_normal(WINDOWS)
        snap["per_example"]["window_nll"] = nll.tolist()
        snap["metrics"]["perplexity"] = float(np.exp(nll.mean()))
        snap["protocol"]["snapshot"] = {"step": STEPS // 2, "of": STEPS, "fraction": 0.5}
        snap["train_steps"] = STEPS // 2
        snap["exposure"] = {k: v / 2 for k, v in record["exposure"].items()}
        half.append(snap)
    return final, half


def frames(tmp_path, final, half):
    paths, curve_paths = [], []
    for i, record in enumerate(final):
        paths.append(tmp_path / f"r{i:03d}.json")
        write_result(paths[-1], record)
    for i, record in enumerate(half):
        curve_paths.append(tmp_path / "curve" / f"c{i:03d}.json")
        write_result(curve_paths[-1], record)
    return read_results(paths), read_results(curve_paths)


def c82(table):
    found = table[(table["test"] == "C8.2") & table["decides"].astype(bool)]
    assert len(found) == 1, found
    return found.iloc[0]


def test_a_comparison_still_moving_gives_no_verdict(tmp_path):
    # CoA-LoRA gains 20% of perplexity from half-way to the end, QLoRA 5%: the gap moved by
    # about 15 (100 x d ln ppl), three times the tolerance of 5.
    results, curves = frames(tmp_path, *run({"coalora": 0.20, "qlora": 0.05}))
    table = claims.claims_table(results, replicates=200, curves=curves)
    row = c82(table)
    assert row["trained"] == settled.STILL_MOVING
    assert row["moved"] == pytest.approx(15, abs=2) and row["moved_low"] > 5
    assert row["moved_tolerance"] == 5 and row["moved_n_seeds"] == 3
    # The interval alone: -5 [..] against the comparable threshold -5 is inconclusive or
    # contradicted; whatever it says, the row gives no verdict and names it.
    assert row["verdict"] == claims.INCONCLUSIVE
    assert row["settling"].startswith("still moving: half-way to end (20 -> 40 steps) +15")
    time_row = table[table["test"] == "C3.1"].iloc[0]
    assert time_row["trained"] == settled.NOT_GATED  # seconds, not a trained model


def test_a_settled_comparison_while_every_perplexity_still_falls(tmp_path):
    # Both methods' perplexities fall by 15% from half-way to the end: the absolute metric is
    # still improving, the comparison is not moving.
    final, half = run({"coalora": 0.15, "qlora": 0.15})
    results, curves = frames(tmp_path, final, half)
    assert curves["primary_value"].mean() > 1.15 * results["primary_value"].mean()
    table = claims.claims_table(results, replicates=200, curves=curves)
    row = c82(table)
    assert row["trained"] == settled.SETTLED, row["settling"]
    assert abs(row["moved"]) < 1 and -5 < row["moved_low"] and row["moved_high"] < 5
    # settled, so the verdict is the interval's: 5% worse than QLoRA is not comparable within
    # the margin of 5 ... or at its edge: either way a decided or an honest open verdict
    assert row["verdict"] in (claims.CONTRADICTED, claims.INCONCLUSIVE)
    assert "inside +-5" in row["settling"]
    # each side's exposure is named
    assert row["exposure"] == (
        "coalora: 16 of 40 steps (lr-weighted 8 of 20); qlora: 40 of 40 steps "
        "(lr-weighted 20 of 20)"
    )
    assert row["exposure_a"] == pytest.approx(0.4) and row["exposure_b"] == 1.0


def test_without_a_half_way_snapshot_nothing_is_decided(tmp_path):
    final, _ = run({"coalora": 0.0, "qlora": 0.0})
    results, _ = frames(tmp_path, final, [])
    table = claims.claims_table(results, replicates=100)
    row = c82(table)
    assert row["trained"] == settled.NO_CURVE and row["verdict"] == claims.INCONCLUSIVE


def test_the_gate_decides_on_the_change_interval():
    final = np.array([[1.0, 1.1, 0.9], [1.2, 1.3, 1.1], [0.8, 0.9, 0.7]])
    assert settled.settle(final, final - 0.5, 1.0, "2 -> 4").state == settled.SETTLED
    assert settled.settle(final, final - 3.0, 1.0, "2 -> 4").state == settled.STILL_MOVING
    noisy = final + np.array([[2.0], [-2.0], [0.0]])  # seeds disagree: too noisy to show it
    gate = settled.settle(noisy, final, 1.0, "2 -> 4")
    assert gate.state == settled.STILL_MOVING and gate.change.low < -1 < 1 < gate.change.high
    assert gate.change == combine(noisy - final)


def test_claims_md_shows_each_test_at_every_snapshot(tmp_path):
    results, curves = frames(tmp_path, *run({"coalora": 0.20, "qlora": 0.05}))
    table, diagnostics = claims.evaluate_claims(results, replicates=100, curves=curves)
    curve = claims.snapshot_effects(results, curves, replicates=100)
    assert sorted(set(curve["fraction"])) == [0.5, 1.0]
    at_half = curve[(curve["test"] == "C8.2") & (curve["fraction"] == 0.5)].iloc[0]
    at_end = curve[(curve["test"] == "C8.2") & (curve["fraction"] == 1.0)].iloc[0]
    assert at_end["effect"] - at_half["effect"] == pytest.approx(15, abs=2)
    assert (at_half["steps"], at_end["steps"]) == ("20", "40")
    text = claims_report.claims_markdown(
        table, claims.claims_summary(table), diagnostics, curve=curve
    )
    assert "## Trained far enough?" in text and "### tiny-llama / bible-lm / nf" in text
    assert "| test | comparison | at 0.5 (step 20) | end (step 40) | trained |" in text
    assert isinstance(curve, pd.DataFrame)
