"""Verdicts on the paper's claims (``coalora.verdicts.claims``) from constructed evaluation records:
a clear win holds, a tie is inconclusive, a reversal is contradicted; the comparable
(non-inferiority) reading, the paper's magnitude, a flat group, the power planner (checked by
simulation); time ratios, the seen/unseen equivalence, the paper's relations and the CLI."""

import copy
import hashlib
import zlib

import numpy as np
import pandas as pd
import pytest

from coalora import report
from coalora.cli import main
from coalora.evaluate.results import FULL_PRECISION, SCHEMA, read_results, write_result
from coalora.verdicts import claimbook, claims, claims_report, power
from coalora.verdicts.sensitivity import FLAT_TEXT
from coalora.verdicts.stats import MIN_SEEDS, Interval, interval_from_components

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


def settled_curve(records, fraction=0.5):
    """Each trained record as it stood at a snapshot with nothing left to move: the same
    outcomes at ``fraction`` of its steps (the settled gate passes exactly)."""
    out = []
    for record in records:
        if record["train_steps"] is None:
            continue
        step = max(1, round(fraction * record["train_steps"]))
        snap = copy.deepcopy(record)
        snap["protocol"]["snapshot"] = {"step": step, "of": record["train_steps"],
                                        "fraction": fraction}  # fmt: skip
        snap["train_steps"], snap["train_seconds"] = step, record["train_seconds"] * fraction
        out.append(snap)
    return out


def write_curves(tmp_path, records) -> list:
    """``settled_curve(records)`` written under ``tmp_path/curve/``: their paths."""
    paths = []
    for i, record in enumerate(settled_curve(records)):
        paths.append(tmp_path / "curve" / f"c{i:03d}.json")
        write_result(paths[-1], record)
    return paths


def table_of(tmp_path, records):
    """The claims table of ``records`` (every run settled: ``settled_curve``) and their paths."""
    paths = []
    for i, record in enumerate(records):
        paths.append(tmp_path / f"r{i:03d}.json")
        write_result(paths[-1], record)
    curves = read_results(write_curves(tmp_path, records))
    return claims.claims_table(read_results(paths), replicates=300, curves=curves), paths


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
    args = ["report", "claims", *map(str, paths), "--out", str(out), "--markdown", str(md),
            "--curves", *map(str, sorted(tmp_path.glob("curve/*.json")))]  # fmt: skip
    assert main([*args, "--replicates", "100"]) == 0
    printed = capsys.readouterr().out
    assert "C1: holds" in printed and "C2: not tested at this scale" in printed
    table = pd.read_csv(out)
    assert list(table.columns) == claims.CLAIM_COLUMNS
    text = md.read_text()
    for claim in claims.load_claims().claims:
        assert f"| {claim.id} | {claim.claim} |" in text
    # The paper table holds relations with our intervals, never absolute HVs side by side.
    curves = read_results(sorted(tmp_path.glob("curve/*.json")))
    paper = claims_report.paper_table(read_results(paths), curves=curves)
    hv = paper[paper["relation"] == "hv_diff(coalora, qlora)"].iloc[0]
    assert hv["paper_SST-2"] == "+0.04" and hv["paper_QQP"] == "+0.06"
    assert hv["low"] < hv["ours"] < hv["high"] and hv["verdict"] == claims.HOLDS
    assert "our_hv" not in paper.columns
    assert not list(tmp_path.glob("*.tmp"))


def test_the_claims_file_is_checked(tmp_path):
    bad = tmp_path / "claims.yaml"
    text = claimbook.CLAIMS_FILE.read_text().replace("relation: greater", "relation: bigger", 1)
    bad.write_text(text)
    with pytest.raises(ValueError, match="relation 'bigger' is not one of"):
        claims.load_claims(bad)
    bad.write_text(claimbook.CLAIMS_FILE.read_text() + "extra: 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        claims.load_claims(bad)


def test_a_gap_margin_follows_the_groups_metric(tmp_path):
    # C7 applies to accuracy and perplexity groups: its gap's comparable margin is 1 point
    # in one and 5% of perplexity in the other, never points read as % of perplexity.
    book = claims.load_claims()
    c7_gap = next(c for c in book.claims if c.id == "C7").tests[1]
    groups = {
        higher: report.Group("m", "t", "int", pd.DataFrame({"higher_is_better": [higher]}))
        for higher in (True, False)
    }
    assert c7_gap.readings(book.margins, groups[True])[1] == ("comparable", -1.0, 1.0)
    assert c7_gap.readings(book.margins, groups[False])[1] == ("comparable", -5.0, 5.0)
    # End to end, in an INT accuracy group: C7.2's comparable row carries the points margin.
    records = coalora(accuracy_curve(0.85), quantizer="int") + qlora(
        accuracy_curve(0.70), quantizer="int"
    )
    table, _ = table_of(tmp_path, records)
    assert row(table, "C7.2")["margin"] == 1.0 and row(table, "C7.2")["verdict"] == claims.HOLDS
    # One margin for a gap in a claim on any metric is refused when the file is read.
    bad = tmp_path / "claims.yaml"
    bad.write_text(
        claimbook.CLAIMS_FILE.read_text().replace(
            "margin: {higher: points, lower: perplexity}", "margin: points"
        )
    )
    with pytest.raises(ValueError, match="claim C7: a gap's margin in a claim on any metric"):
        claims.load_claims(bad)


def test_one_seed_decides_nothing(tmp_path):
    # A clear win at one seed: the effect and its test-sample interval are shown, undecided.
    records = coalora(accuracy_curve(0.85), seeds=(0,)) + qlora(accuracy_curve(0.70), seeds=(0,))
    table, _ = table_of(tmp_path, records)
    r = row(table, "C1.3")
    assert r["low"] > 0 and r["verdict"] == claims.INCONCLUSIVE
    assert r["noise"].startswith("test samples only (1 seed")
    assert r["to_decide"] == "unknown: one seed gives no seed-to-seed variance to plan from"
    assert np.isnan(r["smallest_margin"])


# --------------------------------------------------------------------------- readings


def near_copy(records, method, redraw=0.02, seed=5):
    """``records`` relabelled as ``method`` (one run per seed) whose predictions differ from
    the originals only on a random ``redraw`` share of the examples, redrawn at the same
    accuracy: a true tie, measured on paired predictions (a tight interval around 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for record in records:
        per = record["per_example"]
        predictions = np.array(list(per["predictions"]))
        labels = np.array(list(per["labels"]))
        accuracy = float((predictions == labels).mean())
        redrawn = rng.random(len(labels)) < redraw
        correct = np.where(redrawn, rng.random(len(labels)) < accuracy, predictions == labels)
        flipped = np.where(labels == "1", "0", "1")
        new = "".join(np.where(correct, labels, flipped))
        out.append(
            {
                **record, "method": method, "seen": True,
                "metrics": {"accuracy": float(correct.mean())},
                "per_example": {"predictions": new, "labels": per["labels"]},
                "protocol": {**record["protocol"], "trained_method": method},
                "hashes": {**record["hashes"], "checkpoint": sha(f"{method}{record['seed']}")},
                "train_seconds": 15.0,
            }
        )  # fmt: skip
    return out


def full_precision_lora(accuracy, seeds=(0, 1, 2)):
    """The full-precision LoRA reference: one run per seed on the unquantized base."""
    records = evaluations("lora-fp", lambda bits: accuracy, seeds, trained="lora-fp",
                          configs=[(FULL_PRECISION, 32.0)], quantizer="none")  # fmt: skip
    return [{**r, "seen": None} for r in records]


def summary_of(table):
    return claims.claims_summary(table).set_index("claim")


def test_clear_win_is_superior_and_comparable(tmp_path):
    records = coalora(accuracy_curve(0.85)) + qlora(accuracy_curve(0.70))
    table, _ = table_of(tmp_path, records)
    for reading in ("superior", "comparable"):
        assert row(table, "C1.3", reading=reading)["verdict"] == claims.HOLDS
    comparable = row(table, "C1.3")  # the deciding row: the paper's "comparable or superior"
    assert comparable["reading"] == "comparable" and comparable["margin"] == 1.0
    assert comparable["threshold"] == -1.0 and comparable["smallest_margin"] == 0.0
    assert comparable["to_decide"] == "decided"
    c1 = summary_of(table).loc["C1"]
    assert c1["verdict"] == claims.HOLDS and c1["reading"] == "C1.1, C1.3 superior"
    # The paper's magnitude: its HV differences (+0.04..+0.06) lie below our large win.
    assert row(table, "C1.1")["paper_position"] == "paper +0.04..+0.06: below"


def test_a_comparable_tie_holds_as_comparable_not_superior(tmp_path):
    reference = qlora(accuracy_curve(0.70))
    table, _ = table_of(tmp_path, reference + near_copy(reference, "coalora"))
    superior, comparable = (row(table, "C1.3", reading=r) for r in ("superior", "comparable"))
    assert superior["verdict"] == claims.INCONCLUSIVE, superior
    assert comparable["verdict"] == claims.HOLDS and comparable["decides"], comparable
    # The smallest margin at which comparable holds: -low, below the 1-point margin.
    assert comparable["smallest_margin"] == pytest.approx(-comparable["low"])
    assert 0 < comparable["smallest_margin"] < 1
    c1 = summary_of(table).loc["C1"]
    assert c1["verdict"] == claims.HOLDS and "C1.3 comparable" in c1["reading"]
    # The open superior reading says what would decide it; the tie is far below the paper.
    assert superior["to_decide"].startswith("at the paper effect +5.71: ")
    assert "at our effect" in superior["to_decide"]
    assert superior["paper_position"].endswith(": above")


def test_an_inferior_method_is_not_comparable(tmp_path):
    records = coalora(accuracy_curve(0.58)) + qlora(accuracy_curve(0.70))
    table, _ = table_of(tmp_path, records)
    comparable = row(table, "C1.3")
    assert comparable["verdict"] == claims.CONTRADICTED and comparable["high"] < -1
    assert comparable["smallest_margin"] == pytest.approx(-comparable["low"])
    assert comparable["smallest_margin"] > 1
    assert summary_of(table).loc["C1", "verdict"] == claims.CONTRADICTED


def test_a_flat_group_cannot_test_configuration_awareness(tmp_path):
    # QLoRA scores the same at every budget: no test of configuration-awareness can speak,
    # even where CoA-LoRA's interval alone would say it wins; time (C3) is not gated.
    flat = qlora(accuracy_curve(0.70, slope=0.0))
    records = coalora(accuracy_curve(0.85), seconds=15.0) + flat
    table, paths = table_of(tmp_path, records)
    for test in ("C1.1", "C1.3", "C4.1", "C6.1"):
        r = row(table, test)
        assert r["verdict"] == claims.INCONCLUSIVE and r["sensitivity"].startswith(FLAT_TEXT), r
    assert "(the interval alone: holds)" in row(table, "C1.3")["sensitivity"]
    assert row(table, "C3.1")["sensitivity"] == "not gated"
    assert row(table, "C3.1")["verdict"] == claims.HOLDS
    md = tmp_path / "claims.md"
    args = ["report", "claims", *map(str, paths), "--out", str(tmp_path / "c.csv")]
    assert main([*args, "--markdown", str(md), "--replicates", "100"]) == 0
    text = md.read_text()
    section = text.split("## Can each group tell configurations apart?")[1]
    assert "### tiny-bert / bible-testament / nf" in section
    assert "**cannot test configuration-awareness here** (flat)" in section
    assert "no full-precision reference run" in section
    assert f"| *{FLAT_TEXT} (the interval alone: holds)* |" in text


def test_the_sensitivity_diagnostic_and_its_full_precision_ceiling(tmp_path):
    records = coalora(accuracy_curve(0.85)) + qlora(accuracy_curve(0.70))
    for record in records:
        write_result(tmp_path / f"{len(list(tmp_path.iterdir())):03d}.json", record)
    for i, record in enumerate(full_precision_lora(0.9)):
        write_result(tmp_path / f"fp{i}.json", record)
    results = read_results(sorted(tmp_path.glob("*.json")))
    curves = read_results(write_curves(tmp_path, records))
    table, (diagnostic,) = claims.evaluate_claims(results, replicates=200, curves=curves)
    assert diagnostic.status == "sensitive" and diagnostic.reference == "qlora"
    assert (diagnostic.best_bits, diagnostic.worst_bits) == (4.0, 2.5)
    assert diagnostic.spread.effect == pytest.approx(100 * 0.08 * 1.5, abs=3)
    assert diagnostic.spread.noise == "3 seeds + test samples"
    ceiling = diagnostic.ceiling
    assert ceiling.n_seeds == 3 and ceiling.low < ceiling.effect < ceiling.high
    assert ceiling.effect == pytest.approx(0.9, abs=0.03)
    assert diagnostic.ceiling_text().startswith("lora-fp (full precision): 0.9")
    assert row(table, "C1.3")["sensitivity"].startswith("sensitive: qlora 4.00 vs 2.50 bits +")


def test_paper_position_and_smallest_margin_of_an_interval():
    interval = Interval(0.02, 0.01, 0.03, 3, 0.005, 0.002, "3 seeds + test samples")
    assert claims.paper_position([0.04, 0.06], interval, "hv_diff") == "paper +0.04..+0.06: above"
    assert claims.paper_position([0.0, 0.005], interval, "hv_diff").endswith(": below")
    assert claims.paper_position([0.0, 0.02], interval, "hv_diff").endswith(": inside")
    assert claims.paper_position([], interval, "hv_diff") == "n/a"
    assert claims.smallest_margin(interval, "greater", 0.0) == 0.0
    below = Interval(-0.01, -0.04, 0.02, 3, 0.01, 0.002, "3 seeds + test samples")
    assert claims.smallest_margin(below, "greater", 0.0) == pytest.approx(0.04)
    one_seed = Interval(-0.01, -0.04, 0.02, 1, 0.0, 0.01, "test samples only")
    assert np.isnan(claims.smallest_margin(one_seed, "greater", 0.0))


# --------------------------------------------------------------------------- planner


def simulated_decision_rate(components, effect, relation, threshold, seeds, examples, reps, rng):
    """The share of replications in which the claims' interval decides the test: per-seed
    effects from N(effect, var_seed), one shared test-sample shift N(0, var_test / n) (every
    seed is evaluated on the same examples), the interval as ``coalora.verdicts.stats`` builds it."""
    decided = 0
    se_test2 = components.var_test / examples if components.var_test else 0.0
    for _ in range(reps):
        per_seed = effect + np.sqrt(components.var_seed) * rng.standard_normal(seeds)
        shift = np.sqrt(se_test2) * rng.standard_normal()
        se_seed2 = per_seed.var(ddof=1) / seeds
        interval = interval_from_components(
            float(per_seed.mean() + shift), se_seed2, se_test2, seeds, se_test2 > 0, n_test=examples
        )
        decided += claims.verdict(interval, relation, threshold) != claims.INCONCLUSIVE
    return decided / reps


COSTS = {"train_seconds": 100.0, "setup_seconds": 5.0, "eval_seconds": 10.0}
DESIGNS = {
    # (components: var_seed, var_test per example, n_test, max_test; effect, relation, threshold)
    "seeds and test noise, a win": (power.Components(4.0, 300.0, 400, 1590, **COSTS), 2.0,
                                    "greater", 0.0),
    "test noise dominates": (power.Components(0.2, 2500.0, 400, 20000, **COSTS), 1.5,
                             "greater", 0.0),
    "non-inferiority at a tie": (power.Components(1.0, 400.0, 400, 5000, **COSTS), 0.0,
                                 "greater", -1.0),
    "a loss is contradicted": (power.Components(2.0, 600.0, 600, 5000, **COSTS), -1.5,
                               "greater", 0.0),
    "equivalence within 1": (power.Components(0.5, 300.0, 600, 20000, **COSTS), 0.2,
                             "within", 1.0),
    # all the test sample there is: the test part's quantile t with 7 degrees of freedom
    "eight perplexity windows": (power.Components(2.0, 16.0, 8, 8, **COSTS), 5.0,
                                 "greater", 0.0),
}  # fmt: skip


@pytest.mark.parametrize("design", DESIGNS, ids=list(DESIGNS))
def test_planned_designs_decide_in_80_percent_of_simulated_replications(design):
    components, effect, relation, threshold = DESIGNS[design]
    plan = power.plan(components, effect, relation, threshold)
    assert plan.decidable and MIN_SEEDS <= plan.seeds <= power.MAX_SEEDS, plan
    assert plan.test_examples <= components.max_test and plan.power >= 0.8
    rng = np.random.default_rng(zlib.crc32(design.encode()))
    rate = simulated_decision_rate(
        components, effect, relation, threshold, plan.seeds, plan.test_examples, 2000, rng
    )
    assert abs(rate - 0.8) <= 0.07, (plan, rate)


def test_the_planner_prices_its_designs_and_knows_its_limits():
    components = DESIGNS["seeds and test noise, a win"][0]
    plan = power.plan(components, 2.0, "greater", 0.0)
    expected = plan.seeds * (100.0 + 5.0 + 10.0 * plan.test_examples / 400)
    assert plan.core_seconds == pytest.approx(expected)
    assert plan.text() == (
        f"{plan.seeds} seeds x {plan.test_examples:,} test examples, {expected:,.0f} core-s"
    )
    # No design within the caps separates an effect that sits on the threshold.
    assert (
        power.plan(components, 0.0, "greater", 0.0).text().startswith("not decidable at this scale")
    )
    # A smaller effect needs more: never a cheaper design.
    assert power.plan(components, 3.0, "greater", 0.0).core_seconds <= plan.core_seconds


def test_a_claims_csv_row_can_be_planned_again(tmp_path, capsys):
    # A later step re-plans from claims.csv alone: the row's components give the same plan.
    records = qlora(accuracy_curve(0.70))
    records += near_copy(records, "coalora")
    _, paths = table_of(tmp_path, records)
    out = tmp_path / "claims.csv"
    assert main(["report", "claims", *map(str, paths), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    r = table[(table["test"] == "C1.3") & (table["reading"] == "superior")].iloc[0]
    plan = power.plan(r, 5.71, r["relation"], r["threshold"])
    assert (plan.seeds, plan.test_examples) == (r["plan_seeds_paper"], r["plan_examples_paper"])
    assert plan.core_seconds == pytest.approx(r["plan_core_seconds_paper"], rel=1e-5)
    assert r["n_test"] == N_EXAMPLES and r["max_test"] >= N_EXAMPLES
