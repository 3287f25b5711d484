"""Verdicts on the paper's claims (``coalora.claims``) from constructed evaluation records:
a clear win holds, a tie is inconclusive, a reversal is contradicted; time ratios, the
seen/unseen equivalence, the paper's relations and the CLI."""

import hashlib
import zlib

import numpy as np
import pandas as pd
import pytest

from coalora import claims, claims_report
from coalora.cli import main
from coalora.evaluate.results import SCHEMA, read_results, write_result

CONFIGS = [("b2.5", 2.5), ("b3", 3.0), ("b4", 4.0), ("u2.75", 2.75)]
N_EXAMPLES = 600


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def evaluations(method, accuracy, seeds=(0, 1, 2), *, trained=None, per_config=False,
                seconds=30.0, steps=20, configs=CONFIGS, quantizer="nf", rng=None,
                settings=None):  # fmt: skip
    """Records of one method label: at each seed and configuration, predictions on the SAME
    labelled test examples, correct with probability ``accuracy(bits)`` (+ a seed shift)."""
    rng = rng or np.random.default_rng(zlib.crc32(method.encode()))
    labels = "".join("1" if i % 2 else "0" for i in range(N_EXAMPLES))
    out = []
    for seed in seeds:
        shift = 0.01 * rng.standard_normal()
        for config, bits in configs:
            correct = rng.random(N_EXAMPLES) < accuracy(bits) + shift
            predictions = "".join(
                y if c else str(1 - int(y)) for c, y in zip(correct, labels, strict=True)
            )
            ckpt = f"{method}{seed}{config if per_config else ''}"
            out.append(
                {
                    "schema": SCHEMA, "model": "tiny-bert", "task": "bible-testament",
                    "method": method, "config_name": config,
                    "seen": None if trained is None else not config.startswith("u"),
                    "avg_bits": bits, "budget": bits, "quantizer": quantizer,
                    "metrics": {"accuracy": float(correct.mean())},
                    "per_example": {"predictions": predictions, "labels": labels},
                    "primary_metric": "accuracy", "higher_is_better": True,
                    "protocol": {
                        "trained_method": trained or method,
                        "train_settings": {"r": 16, "search_mode": "full", "seed": seed,
                                           "configs_per_step": 2, **(settings or {})},
                    },
                    "hashes": {"qconfig": sha(config), "base_weights": sha("m"),
                               "checkpoint": sha(ckpt)},
                    "seed": seed,
                    "train_seconds": seconds * (1 + 0.02 * seed), "train_steps": steps,
                    "setup_seconds": 0.0, "eval_seconds": 0.0, "packages": {},
                    "code_version": "test",
                }
            )  # fmt: skip
    return out


def qlora(accuracy, **kw):
    return evaluations("qlora", accuracy, trained="qlora", per_config=True, seconds=10.0,
                       configs=CONFIGS[:3], **kw)  # fmt: skip


def coalora(accuracy, **kw):
    return evaluations("coalora", accuracy, trained="coalora", **kw)


def table_of(tmp_path, records):
    paths = []
    for i, record in enumerate(records):
        paths.append(tmp_path / f"r{i:03d}.json")
        write_result(paths[-1], record)
    return claims.claims_table(read_results(paths), replicates=300), paths


def row(table, test, comparison=None, reading=None):
    """The row of ``test`` (its deciding reading unless ``reading`` names one)."""
    found = table[table["test"] == test]
    if comparison:
        found = found[found["comparison"] == comparison]
    found = found[found["reading"] == reading] if reading else found[found["decides"]]
    assert len(found) == 1, found
    return found.iloc[0]


def accuracy_curve(level, slope=0.08):
    """Accuracy rising with the bits: 12 points from 2.5 to 4 bits, so the reference method
    tells its budgets apart (the group is not flat; see test_a_flat_group_cannot_test_...)."""
    return lambda bits: level + slope * (bits - 2.5)


@pytest.mark.parametrize(
    "coalora_level,verdict",
    [(0.85, claims.HOLDS), (0.70, claims.INCONCLUSIVE), (0.58, claims.CONTRADICTED)],
    ids=["clear win", "tie", "reversal"],
)
def test_hv_and_gap_verdicts(tmp_path, coalora_level, verdict):
    records = coalora(accuracy_curve(coalora_level)) + qlora(accuracy_curve(0.70))
    table, _ = table_of(tmp_path, records)
    for test in ("C1.1", "C1.3"):  # HV difference, accuracy gap
        r = row(table, test, reading="superior")
        assert r["verdict"] == verdict, r
        assert r["noise"] == "3 seeds + test samples" and r["n_seeds"] == 3
        assert r["low"] < r["effect"] < r["high"]
    gap = row(table, "C1.3")
    assert gap["effect"] == pytest.approx(100 * (coalora_level - 0.70), abs=2.5)
    assert "600 test examples" in gap["scale"] and "3 seed(s) [0, 1, 2]" in gap["scale"]


def test_time_ratio_and_unequal_steps_are_reported(tmp_path):
    # CoA-LoRA 30 s per run, QLoRA 3 runs of 10 s: the ratio is 1.0 at every seed -> not < 1.
    records = coalora(accuracy_curve(0.8), steps=40) + qlora(accuracy_curve(0.7))
    table, _ = table_of(tmp_path, records)
    ratio = row(table, "C3.1")
    assert ratio["effect"] == pytest.approx(1.0, rel=0.01)
    assert ratio["verdict"] == claims.INCONCLUSIVE and ratio["unit"] == "ratio"
    assert "unequal optimizer steps per run (coalora 40, qlora 20)" in ratio["deviations"]
    # Equal steps, cheaper CoA-LoRA: holds, and no deviation is named.
    table, _ = table_of(
        tmp_path, coalora(accuracy_curve(0.8), seconds=15.0) + qlora(accuracy_curve(0.7))
    )
    ratio = row(table, "C3.1")
    assert ratio["verdict"] == claims.HOLDS and ratio["high"] < 1 and ratio["deviations"] == ""
    assert ratio["paper"].startswith("QNLI 0.48, MNLI 0.44")


def test_seen_unseen_within_one_point(tmp_path):
    # u2.75 lies on the seen curve (matched at equal bits): within +-1 point.
    table, _ = table_of(tmp_path, coalora(accuracy_curve(0.8)))
    r = row(table, "C4.1")
    assert abs(r["effect"]) < 4 and r["relation"] == "within"
    assert r["verdict"] in (claims.HOLDS, claims.INCONCLUSIVE)

    # 10 points below the curve: contradicted.
    def dip(bits):
        return accuracy_curve(0.8)(bits) - (0.10 if bits == 2.75 else 0.0)

    table, _ = table_of(tmp_path, coalora(dip))
    assert row(table, "C4.1")["verdict"] == claims.CONTRADICTED


def test_seen_unseen_uses_the_seeds_where_unseen_points_are_inside_the_seen_range(tmp_path):
    # At seed 2 the search dropped b2.5: u2.75 is outside the seen range [3, 4] there.
    records = coalora(accuracy_curve(0.8))
    for record in records:
        if record["seed"] == 2 and record["config_name"] == "b2.5":
            record["seen"] = False
    table, _ = table_of(tmp_path, records)
    r = row(table, "C4.1")
    assert r["n_seeds"] == 2 and "2 seed(s) [0, 1]" in r["scale"]


def test_search_claims_pick_runs_by_their_search_mode(tmp_path):
    records = (
        coalora(accuracy_curve(0.85))
        + evaluations("coalora-frozen", accuracy_curve(0.70), trained="coalora",
                      settings={"search_mode": "frozen"})
        + evaluations("coalora-random", accuracy_curve(0.70), trained="coalora",
                      settings={"search_mode": "random"})
    )  # fmt: skip
    table, _ = table_of(tmp_path, records)
    assert row(table, "C5.1")["comparison"] == "coalora vs coalora-frozen"
    assert row(table, "C5.1")["verdict"] == claims.HOLDS
    random = row(table, "C5.2")  # random - frozen, claimed < 1 point
    assert random["comparison"] == "coalora-random vs coalora-frozen"
    assert random["verdict"] in (claims.HOLDS, claims.INCONCLUSIVE)


def test_claims_cli_writes_every_claim_and_the_paper_relations(tmp_path, capsys):
    records = coalora(accuracy_curve(0.85)) + qlora(accuracy_curve(0.70))
    _, paths = table_of(tmp_path, records)
    out, md = tmp_path / "claims.csv", tmp_path / "claims.md"
    args = ["report", "claims", *map(str, paths), "--out", str(out), "--markdown", str(md)]
    assert main([*args, "--replicates", "100"]) == 0
    printed = capsys.readouterr().out
    assert "C1: holds" in printed and "C2: not tested at this scale" in printed
    table = pd.read_csv(out)
    assert list(table.columns) == claims.CLAIM_COLUMNS
    text = md.read_text()
    for claim in claims.load_claims().claims:
        assert f"| {claim.id} | {claim.claim} |" in text
    # The paper table holds relations with our intervals, never absolute HVs side by side.
    paper = claims_report.paper_table(read_results(paths))
    hv = paper[paper["relation"] == "hv_diff(coalora, qlora)"].iloc[0]
    assert hv["paper_SST-2"] == "+0.04" and hv["paper_QQP"] == "+0.06"
    assert hv["low"] < hv["ours"] < hv["high"] and hv["verdict"] == claims.HOLDS
    assert "our_hv" not in paper.columns
    assert not list(tmp_path.glob("*.tmp"))


def test_the_claims_file_is_checked(tmp_path):
    bad = tmp_path / "claims.yaml"
    text = claims.CLAIMS_FILE.read_text().replace("relation: greater", "relation: bigger", 1)
    bad.write_text(text)
    with pytest.raises(ValueError, match="relation 'bigger' is not one of"):
        claims.load_claims(bad)
    bad.write_text(claims.CLAIMS_FILE.read_text() + "extra: 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        claims.load_claims(bad)


def test_one_seed_decides_nothing(tmp_path):
    # A clear win at one seed: the effect and its test-sample interval are shown, undecided.
    records = coalora(accuracy_curve(0.85), seeds=(0,)) + qlora(accuracy_curve(0.70), seeds=(0,))
    table, _ = table_of(tmp_path, records)
    r = row(table, "C1.3")
    assert r["low"] > 0 and r["verdict"] == claims.INCONCLUSIVE
    assert r["noise"].startswith("test samples only (1 seed")
