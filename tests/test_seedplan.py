"""The seed planner (coalora/verdicts/seedplan.py): costs from benchmark files, its simulated verdicts
against the analytic power, claims decided as the claims table decides them, the search."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from coalora.cli import main
from coalora.verdicts import seedplan
from coalora.verdicts.claims import NOT_GATED
from coalora.verdicts.stats import MIN_SEEDS

GROUP_A = {"model": "m", "task": "t", "quantizer": "nf"}
GROUP_B = {"model": "m", "task": "t", "quantizer": "int"}


def _row(claim, group, comparison, effect, se_seed, *, relation="greater", threshold=0.0,
         statistic="gap", se_test=0.0, n_test=0, gated=False, n_seeds=4):  # fmt: skip
    return {
        "claim": claim, "test": f"{claim}.1", **group, "comparison": comparison,
        "statistic": statistic, "effect": effect, "relation": relation,
        "threshold": threshold, "decides": True,
        "sensitivity": "sensitive: ..." if gated else NOT_GATED,
        "n_seeds": n_seeds, "se_seed": se_seed, "se_test": se_test, "n_test": n_test,
        "max_test": n_test, "train_seconds": 1.0, "setup_seconds": 0.0, "eval_seconds": 0.0,
    }  # fmt: skip


def _gate(group, spread, se_seed, min_effect=1.0, n_seeds=4):
    return {
        **group, "spread": spread, "se_seed": se_seed, "se_test": 0.0, "n_seeds": n_seeds,
        "n_test": 0, "min_effect": min_effect,
    }  # fmt: skip


def _planner(rows, gates=(), costs=None, **kw):
    costs = costs or {
        "a": seedplan.ExperimentCost("a", 10.0, 20.0, 10.0, 4),
        "b": seedplan.ExperimentCost("b", 10.0, 20.0, 10.0, 4),
    }
    groups = {"a": tuple(GROUP_A.values()), "b": tuple(GROUP_B.values())}
    columns = [*GROUP_A, "spread", "se_seed", "se_test", "n_seeds", "n_test", "min_effect"]
    gate_frame = pd.DataFrame(list(gates), columns=columns)
    return seedplan.SeedPlanner(
        pd.DataFrame(rows), gate_frame, groups, costs, 0.0, ["C1", "C2", "C3"], cores=1, **kw
    )


# ------------------------------------------------------------------------------- costs


def _bench(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t1\n")


def test_costs_split_fixed_first_and_later_seeds(tmp_path):
    b = tmp_path / "benchmarks"
    _bench(b / "claims.tsv", 5)  # a report job of all experiments
    _bench(b / "exp" / "cost_table.tsv", 30)
    _bench(b / "exp" / "none" / "s0" / "eval.tsv", 7)  # the unadapted evaluation: once
    _bench(b / "exp" / "qlora" / "s0" / "train-b3.tsv", 50)  # seed 0 carries extra work
    _bench(b / "exp" / "coalora" / "s0" / "train.tsv", 40)
    for seed, seconds in ((1, 30), (2, 34)):
        _bench(b / "exp" / "qlora" / f"s{seed}" / "train-b3.tsv", seconds)
        _bench(b / "exp" / "coalora" / f"s{seed}" / "train.tsv", 20)
    costs, reports = seedplan.experiment_costs(tmp_path)
    cost = costs["exp"]
    assert reports == 5
    assert (cost.fixed, cost.first_seed, cost.later_seed, cost.measured_seeds) == (37, 90, 52, 3)
    assert cost.seconds(3) == 37 + 90 + 52 + 52 == 37 + 90 + 30 + 20 + 34 + 20  # as measured
    assert cost.seconds(5) == 37 + 90 + 4 * 52
    assert cost.seconds(0) == 0


def test_a_corrupt_benchmark_file_is_named(tmp_path):
    bad = tmp_path / "benchmarks" / "exp" / "qlora" / "s0" / "train.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("nothing here\n")
    with pytest.raises(ValueError, match="train.tsv is not a Snakemake benchmark file"):
        seedplan.experiment_costs(tmp_path)


# ------------------------------------------------------------------ simulated verdicts


@pytest.mark.parametrize(
    "effect, se_seed, se_test, n_test, relation, threshold, statistic, seeds",
    [
        (-14.4, 4.65, 1.5, 8, "greater", -5.0, "gap", 8),  # C7.2 under INT, as measured
        (2.3, 0.55, 1.16, 400, "greater", -1.0, "gap", 3),  # C1.3 (comparable)
        (0.4, 0.67, 0.1, 400, "within", 1.0, "gap", 20),  # C4, were its test noise small
        (1.42, 0.031, 0.0, 0, "less", 1.0, "time_ratio", 2),  # a time ratio (log scale)
        (-0.005, 0.0019, 0.0005, 8, "greater", 0.0, "hv_diff", 6),
        (3.0, 0.2, 0.5, 400, "greater", 0.0, "gap", 2),  # two seeds: t with one df
        (0.1, 0.05, 0.3, 400, "within", 1.0, "gap", 2),
    ],
)
def test_simulated_verdicts_agree_with_the_analytic_power(
    effect, se_seed, se_test, n_test, relation, threshold, statistic, seeds
):
    row = _row("C1", GROUP_A, "x vs y", effect, se_seed, relation=relation, threshold=threshold,
               statistic=statistic, se_test=se_test, n_test=n_test)  # fmt: skip
    planner = _planner([row], draws=20000)
    simulated = planner.allocation({"a": seeds, "b": 0}).chances["C1"]
    analytic = seedplan.row_power(pd.Series(row), seeds)
    assert 0.05 < analytic < 0.995  # a case where the two could disagree
    assert simulated == pytest.approx(analytic, abs=0.03)


# ---------------------------------------------------------------------------- claims


def test_claims_are_decided_as_the_claims_table_decides_them():
    rows = [
        # C1: two tests on the holds side, each decided about half the time: both needed
        _row("C1", GROUP_A, "x vs y", 3.0, 0.9),
        _row("C1", GROUP_A, "x vs z", 3.0, 0.9),
        # C2: one clear contradiction among inconclusive tests decides it
        _row("C2", GROUP_A, "x vs y", -10.0, 0.5),
        _row("C2", GROUP_A, "x vs w", 0.0, 5.0),
        # C3: a clear holds, gated by a group that cannot tell its budgets apart
        _row("C3", GROUP_B, "x vs y", 10.0, 0.5, gated=True),
    ]
    planner = _planner(rows, gates=[_gate(GROUP_B, 0.0, 1.0)])
    a = planner.allocation({"a": 4, "b": 4})
    one = seedplan.row_power(pd.Series(rows[0]), 4)
    assert 0.2 < one < 0.8
    # the two C1 tests are distinct comparisons, drawn independently: both hold ~ one^2
    assert a.chances["C1"] == pytest.approx(one**2, abs=0.03)
    assert a.chances["C2"] > 0.99
    assert a.chances["C3"] < 0.05  # gated out: the diagnostic does not pass
    assert a.decided_counts.max() <= 3
    # with the gate passing, C3 is decided
    sensitive = _planner(rows, gates=[_gate(GROUP_B, 50.0, 1.0)])
    assert sensitive.allocation({"a": 4, "b": 4}).chances["C3"] > 0.99
    # one seed decides nothing; a left-out experiment tests nothing
    assert _planner(rows).allocation({"a": 1, "b": 0}).expected == 0


def test_readings_of_one_comparison_share_their_draws():
    # C1 and C2 rest on the same comparison in the same group (as C7.2 and C8.2 under INT)
    rows = [_row("C1", GROUP_A, "x vs y", -8.0, 4.0, threshold=-5.0),
            _row("C2", GROUP_A, "x vs y", -8.0, 4.0, threshold=-5.0)]  # fmt: skip
    a = _planner(rows).allocation({"a": 6, "b": 0})
    assert 0.1 < a.chances["C1"] < 0.9
    assert a.chances["C1"] == a.chances["C2"]
    assert a.at_least(2) == pytest.approx(a.chances["C1"])  # together or not at all


def test_the_search_keeps_to_the_budget_and_spends_on_what_can_decide():
    rows = [
        _row("C1", GROUP_A, "x vs y", 0.0, 5.0),  # group a: nothing to decide
        _row("C2", GROUP_B, "x vs y", -3.0, 4.0),
    ]  # group b: more seeds decide it
    planner = _planner(rows)
    budget = 10 + 20 + 10 + 10 + 20 + 10 * 9  # a at 2 seeds, b at 10
    best = planner.best(budget, max_seeds=16, top=3, target=1)
    assert all(a.wall_seconds <= budget for a in best)
    assert best[0].seeds == {"a": 2, "b": 10}
    assert all(min(a.seeds.values()) >= MIN_SEEDS for a in best)
    dropped = planner.best(budget, max_seeds=16, top=1, drop=True, target=1)[0]
    assert dropped.seeds == {"a": 0, "b": 14}  # a's 40 job-seconds buy b four more seeds
    assert dropped.at_least(1) > best[0].at_least(1)
    assert planner.best(10.0, max_seeds=16) == []  # nothing fits


def test_fill_factor_scales_the_wall_time():
    rows = [_row("C1", GROUP_A, "x vs y", 1.0, 1.0)]
    plain, slow = _planner(rows), _planner(rows, fill=1.5)
    seeds = {"a": 3, "b": 2}
    assert plain.wall_seconds(seeds) == (10 + 20 + 2 * 10) + (10 + 20 + 10)
    assert slow.wall_seconds(seeds) == pytest.approx(1.5 * plain.wall_seconds(seeds))
    assert math.isclose(plain.allocation(seeds).wall_seconds, plain.wall_seconds(seeds))


def test_at_least_counts_simulated_runs():
    a = seedplan.Allocation({"a": 2}, 1.0, {}, np.array([0, 1, 2, 2]))
    assert (a.expected, a.at_least(1), a.at_least(2), a.at_least(3)) == (1.25, 0.75, 0.5, 0.0)


# -------------------------------------------------------------------------------- CLI


def test_cli_on_a_missing_directory_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"coalora: error: {tmp_path / 'nowhere'} is not a results directory"]


def test_cli_refuses_an_impossible_budget(tmp_path, capsys):
    assert main(["plan", str(tmp_path), "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_the_settled_gate_is_replayed_a_moving_test_decides_nothing():
    clear = _row("C1", GROUP_A, "x vs y", 5.0, 0.5)  # decided at 4 seeds almost surely
    settled = {**clear, "trained": "settled", "moved": 0.0, "moved_tolerance": 1.0,
               "moved_se_seed": 0.1, "moved_se_test": 0.0, "moved_n_seeds": 4}  # fmt: skip
    moving = {**settled, "trained": "still moving", "moved": 6.0}
    noisy = {**settled, "trained": "still moving", "moved_se_seed": 0.8}  # seeds disagree
    no_curve = {**clear, "trained": "no curve"}
    chance = {
        name: _planner([row]).allocation({"a": 4}).chances["C1"]
        for name, row in [("clear", clear), ("settled", settled), ("moving", moving),
                          ("noisy", noisy), ("no curve", no_curve)]
    }  # fmt: skip
    assert chance["clear"] > 0.99 and chance["settled"] > 0.99
    assert chance["moving"] == 0.0 and chance["no curve"] == 0.0
    # a change too noisy to show it settled at 4 seeds: more seeds can show it
    noisy_more = _planner([noisy]).allocation({"a": 64}).chances["C1"]
    assert chance["noisy"] < 0.5 < noisy_more


# ------------------------------------------------------------------------------- steps


@pytest.mark.parametrize("decay", [0.5, 1.0, 2.0])
def test_extrapolation_follows_the_assumed_curve(decay):
    # an effect that goes exactly as a + b * t^-decay, measured at 24 and 48 steps
    def effect(t):
        return -3.0 + 40.0 * t**-decay

    moved = effect(48) - effect(24)
    for factor in (0.5, 1.0, 2.0, 4.0):
        shift, change = seedplan.extrapolate(moved, factor, decay)
        t = 48 * factor
        assert shift == pytest.approx(effect(t) - effect(48))
        assert change == pytest.approx(effect(t) - effect(t / 2))
    assert seedplan.extrapolate(moved, 1.0, decay) == (0.0, moved)
    with pytest.raises(ValueError, match="positive"):
        seedplan.extrapolate(moved, 0.0, decay)


def test_more_steps_cost_only_the_training_loops():
    cost = seedplan.ExperimentCost("a", 10.0, 50.0, 30.0, 3, first_train=40.0, later_train=20.0)
    assert cost.seconds(3) == 10 + 50 + 2 * 30
    # twice the steps: each seed's training loops once more, nothing else
    assert cost.seconds(3, 2.0) == 10 + (50 + 40) + 2 * (30 + 20)
    assert cost.seconds(2, 0.5) == 10 + (50 - 20) + (30 - 10)
    assert cost.seconds(0, 4.0) == 0


def test_training_seconds_count_each_trained_run_once(tmp_path):
    def rec(method, seed, config, seconds, checkpoint):
        path = tmp_path / "exp" / method / f"s{seed}" / "eval" / f"{config}.json"
        return {"path": str(path), "method": method, "seed": seed, "config_name": config,
                "train_seconds": seconds, "train_steps": 48,
                "hashes.checkpoint": checkpoint}  # fmt: skip

    records = pd.DataFrame([
        rec("coalora", 0, "b3", 100.0, "c0"), rec("coalora", 0, "b4", 100.0, "c0"),  # one run
        rec("qlora", 0, "b3", 30.0, "q3"), rec("qlora", 0, "b4", 35.0, "q4"),  # one per config
        rec("coalora", 1, "b3", 90.0, "c1"), rec("coalora", 1, "b4", 90.0, "c1"),
        {**rec("none", 0, "b3", math.nan, None)},  # the unadapted base trains nothing
    ])  # fmt: skip
    trained = seedplan.training_seconds(tmp_path, records)
    assert trained == {"exp": {"steps": 48, "seeds": {0: 165.0, 1: 90.0}}}


def _moving_row(moved, se, tolerance=5.0):
    row = _row("C1", GROUP_A, "x vs y", -4.5, 0.15, threshold=0.0)  # contradicted if settled
    return {**row, "trained": "still moving", "moved": moved, "moved_tolerance": tolerance,
            "moved_se_seed": se, "moved_se_test": 0.0, "moved_n_seeds": 4}  # fmt: skip


def test_a_moving_test_settles_with_more_steps_and_its_effect_moves_on():
    costs = {"a": seedplan.ExperimentCost("a", 0.0, 10.0, 10.0, 4, 8.0, 8.0, steps=48),
             "b": seedplan.ExperimentCost("b", 0.0, 10.0, 10.0, 4)}  # fmt: skip
    planner = _planner([_moving_row(6.0, 0.3)], costs=costs, decay=1.0)
    chance = {f: planner.allocation({"a": 4}, {"a": f}).chances["C1"] for f in (1, 2, 4)}
    assert chance[1] == 0.0  # moved by 6 against +-5: still moving
    assert chance[2] > 0.95  # predicted to move by 3 between 48 and 96 steps: settled
    # and the effect itself has moved on: -4.5 + 6 * (1 - 1/2) = -1.5 at 96 steps, and
    # -4.5 + 6 * (1 - 1/4) = 0 at 192, where nothing is decided either way
    shift, change = planner.moves(pd.Series(_moving_row(6.0, 0.3)), 4.0)
    assert (shift, change) == (pytest.approx(4.5), pytest.approx(1.5))
    assert chance[4] < 0.1
    # the search finds the step count that decides it, and prices it
    best = planner.best(1e9, max_seeds=4, top=1, target=1, factors=(1.0, 2.0, 4.0))[0]
    assert (best.seeds["a"], best.steps["a"]) == (4, 2.0)
    assert best.wall_seconds == pytest.approx(planner.wall_seconds({"a": 4, "b": 2}, {"a": 2.0}))
    assert best.wall_seconds == pytest.approx((10 + 8) + 3 * (10 + 8) + 10 + 10)


def test_a_not_gated_test_is_not_extrapolated():
    time_row = {**_row("C1", GROUP_A, "x vs y", 1.4, 0.1, statistic="time_ratio",
                       relation="less", threshold=1.0), "trained": NOT_GATED}  # fmt: skip
    planner = _planner([time_row])
    assert planner.moves(pd.Series(time_row), 4.0) == (0.0, pytest.approx(math.nan, nan_ok=True))
    one, four = (planner.allocation({"a": 4}, {"a": f}).chances["C1"] for f in (1.0, 4.0))
    assert one == four


def test_cli_refuses_bad_step_factors(tmp_path, capsys):
    for bad in ("0", "1,x", "-2", ""):
        assert main(["plan", str(tmp_path), "--steps", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--steps" in err[0]
    assert main(["plan", str(tmp_path), "--decay", "0"]) == 2
    assert "--decay" in capsys.readouterr().err


def test_the_documented_plan_of_the_reference_is_the_commands(capsys):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if not (repo / "results" / "reference" / "claims.csv").is_file():
        pytest.skip("no reference run yet (make run && make reference)")
    command = "coalora plan results/reference --steps 0.75,1,1.5,2,4 --max-seeds 8 --minutes 30"
    doc = (repo / "docs" / "claims.md").read_text()
    block = doc.split(f"$ {command}\n")[1].split("```")[0]
    args = command.split()[1:]
    args[1] = str(repo / args[1])
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == block.strip()
