"""How many seeds per experiment decide the most claims within a time budget (`coalora plan`).

``coalora.verdicts.power`` plans one test at a time. A default is planned as a whole: every experiment
gets a number of seeds, their jobs share one machine's cores for a fixed wall time, and a claim
is decided when any of its tests is contradicted or all of them hold (``claims.overall_verdict``).
From a finished run (its records and Snakemake's ``benchmark:`` files) this module predicts, for
every allocation of seeds to the run's experiments, the wall time and each claim's probability
of a decided verdict, and keeps the allocations that fit the budget.

The model, and what it leaves out:

- **Cost.** An experiment's job-seconds are its fixed jobs (data, cost tables, allocation,
  figures, the unadapted evaluation) plus its first seed's jobs plus one later seed's (the mean
  of the measured later seeds: the first may carry extra work, e.g. lm-eval at seed 0) for every
  further seed. The wall time is all jobs' seconds over the cores, times the run's own fill
  factor (its measured wall against that floor; 1 without ``--wall``: a floor, not a forecast).
- **Verdicts.** Each test row that carries its claim's verdict (``decides``) is replayed by
  simulation at the planned seeds (``simulated_intervals``: the estimate drawn around the
  run's effect from its own noise components, the seed variance re-estimated from that many
  seeds, the interval built as ``coalora.verdicts.stats`` builds it) and decided as the claims table
  decides it (``claims.decide``), at the measured test size. A test of
  configuration-awareness in a group that may turn out flat also needs the group's
  sensitivity diagnostic to pass (its interval above 0 and reaching the minimum effect),
  replayed the same way from the diagnostic's own interval; and every gated test its settled
  gate (``coalora.verdicts.settled``): the change from the half-way snapshot to the end,
  replayed from its own interval (more seeds narrow a noisy change; only more steps can stop
  a moving one). A single test's simulated chance agrees with ``power.power`` (``row_power``;
  ``tests/test_seedplan.py``).
- **Steps.** A plan may also change each experiment's optimizer steps, by a factor of the
  run's own. The training loops' seconds (the records' ``train_seconds``, one per trained run)
  scale with the factor; everything else in a job (loading, quantizing, evaluating, the
  snapshots' evaluations: the snapshots are fractions of the steps) does not. How a gated
  test's effect moves is extrapolated from its own settled gate (``extrapolate``): the effect
  is taken to approach its limit as ``a + b * steps**-decay``, which the measured change from
  the half-way snapshot to the end pins down (one change, one curve); the noise of the effect
  and of its change are taken as measured. ``decay`` is an assumption, not a fit: 0.5 by
  default, slower than the 0.65 at which QLoRA's 3-bit log perplexity on the default's group
  fell between runs of 8, 48 and 96 steps (the only curve measured across run lengths), so
  that a plan does not promise settling early. Time ratios (C3) are not extrapolated: both
  sides' times scale alike. The sensitivity diagnostic is kept as measured.
- **Claims.** A claim is decided in a simulated run when one of its tests is contradicted or
  all hold. Readings of one interval share its draws (C7.2 and C8.2 under INT are one
  comparison); distinct intervals are drawn independently, although in truth they share
  seeds and records: the chance of at least ``k`` decided claims is approximate.
- **Effects.** A plan at the run's own effects says what more seeds of *this* experiment would
  decide if the effects are what this run measured; a run with few seeds estimates them
  loosely, so a plan is a forecast to write down before the next run, not a result.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.results import read_results
from ..report import GROUP_KEYS, quantized
from ..timing import BENCHMARKS_DIR, benchmark_jobs
from . import claims, power
from .compare import CURVE_GLOB, RECORD_GLOB, SEED_FOLDER, run_files
from .reference import measured_wall
from .sensitivity import sensitivity_frame
from .settled import NO_CURVE, NOT_GATED
from .stats import MIN_SEEDS, half_width

# The method label of the unadapted evaluation: evaluated once per experiment (a fixed cost).
UNADAPTED = "none"
# The assumed exponent of an effect's approach to its limit with optimizer steps (module doc).
DECAY = 0.5


def extrapolate(moved: float, factor: float, decay: float = DECAY) -> tuple[float, float]:
    """How a test moves if its runs train ``factor`` times as many steps, from its measured
    change ``moved`` between the half-way snapshot (T0/2) and the end (T0), for an effect that
    goes as ``a + b * steps**-decay``: (the effect at T = factor * T0 minus the effect at T0,
    the change from T/2 to T). At factor 1: (0, moved)."""
    if factor <= 0 or decay <= 0:
        raise ValueError(f"steps factor and decay must be positive, got {factor} and {decay}")
    shrink = factor**-decay
    return moved * (1.0 - shrink) / (2.0**decay - 1.0), moved * shrink


# --------------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class ExperimentCost:
    """One experiment's measured job-seconds, split into what scales with its seeds."""

    name: str
    fixed: float  # jobs that run once (whatever the seeds)
    first_seed: float  # the first seed's jobs
    later_seed: float  # one later seed's jobs (mean of the measured later seeds)
    measured_seeds: int
    first_train: float = 0.0  # of first_seed: its training loops' seconds (scale with steps)
    later_train: float = 0.0  # of later_seed: the same
    steps: int = 0  # the runs' optimizer steps (0: not known)

    def seconds(self, seeds: int, factor: float = 1.0) -> float:
        """Job-seconds of the experiment at ``seeds`` seeds (0: not run), its runs training
        ``factor`` times their measured steps."""
        if seeds <= 0:
            return 0.0
        first = self.first_seed + (factor - 1.0) * self.first_train
        later = self.later_seed + (factor - 1.0) * self.later_train
        return self.fixed + first + (seeds - 1) * later


def training_seconds(results: Path, records: pd.DataFrame) -> dict[str, dict]:
    """Per experiment (the records' folder under ``results``): ``{"steps": the runs' steps,
    "seeds": {seed: seconds of its training loops}}``, each trained run counted once (its
    records share its checkpoint's hash; a per-configuration method trains one run per
    configuration)."""
    root = Path(results)
    if "train_seconds" not in records:
        return {}
    rows = records[pd.to_numeric(records["train_seconds"], errors="coerce").notna()]
    if rows.empty:
        return {}
    run = rows.get("hashes.checkpoint", pd.Series(None, index=rows.index))
    runs = rows.assign(
        _experiment=rows["path"].map(lambda p: Path(p).relative_to(root).parts[0]),
        _run=run.fillna(rows["config_name"]),
    ).drop_duplicates(["_experiment", "method", "seed", "_run"])
    trained = {}
    for name, part in runs.groupby("_experiment"):
        seconds = part.groupby("seed")["train_seconds"].sum()
        trained[str(name)] = {
            "steps": int(part["train_steps"].max()),
            "seeds": {int(s): float(v) for s, v in seconds.items()},
        }
    return trained


def experiment_costs(results: Path, trained: dict[str, dict] | None = None
                     ) -> tuple[dict[str, ExperimentCost], float]:  # fmt: skip
    """Per experiment (a folder under ``results/benchmarks``), its cost; and the seconds of the
    report jobs of all experiments together (the files directly in ``benchmarks/``).
    ``trained`` (``training_seconds``) splits off the seconds that scale with the steps."""
    trained = trained or {}
    reports = 0.0
    fixed: dict[str, float] = {}
    per_seed: dict[str, dict[int, float]] = {}
    for _, parts, seconds in benchmark_jobs(results):
        if len(parts) == 1:
            reports += seconds
            continue
        name = parts[0]
        fixed.setdefault(name, 0.0)
        per_seed.setdefault(name, {})
        seeded = len(parts) > 3 and SEED_FOLDER.fullmatch(parts[2])
        if not seeded or parts[1] == UNADAPTED:
            fixed[name] += seconds
        else:
            s = int(parts[2][1:])
            per_seed[name][s] = per_seed[name].get(s, 0.0) + seconds
    costs = {}
    for name in fixed:
        seeds = per_seed[name]
        if not seeds:
            raise ValueError(
                f"{Path(results) / BENCHMARKS_DIR / name}: no job of any seed (nothing to scale a plan by)"
            )
        order = sorted(seeds)
        later = [seeds[s] for s in order[1:]]
        first = seeds[order[0]]
        loops = trained.get(name, {"steps": 0, "seeds": {}})
        first_train = loops["seeds"].get(order[0], 0.0)
        later_train = [loops["seeds"].get(s, 0.0) for s in order[1:]]
        costs[name] = ExperimentCost(
            name, fixed[name], first, float(np.mean(later)) if later else first, len(order),
            first_train, float(np.mean(later_train)) if later_train else first_train,
            loops["steps"],
        )  # fmt: skip
    return costs, reports


# ---------------------------------------------------------------------- probabilities

DRAWS = 4000  # simulated replications of a run per allocation


def row_power(row, seeds: int) -> float:
    """The probability that a claims-table row is decided at ``seeds`` seeds (its measured test
    size, its own effect and noise): ``power.power``, against which the simulation is checked."""
    effect, threshold = (
        power.on_interval_scale(float(row[name]), row["statistic"])
        for name in ("effect", "threshold")
    )
    components = power.Components.from_row(row)
    n = max(components.n_test, 1)
    p = power.power(components, effect, row["relation"], threshold, seeds, n)
    return float(np.clip(p, 0.0, 1.0))


def simulated_intervals(effect: float, components: power.Components, seeds: int,
                        rng: np.random.Generator, draws: int = DRAWS):  # fmt: skip
    """``draws`` simulated (low, high) of an interval at ``seeds`` seeds, for a true ``effect``
    (on the interval's scale) and the run's noise ``components``, built as ``coalora.verdicts.stats``
    builds it: the seed part's variance estimated from the seeds (a scaled chi-square), the
    test part taken as known (with the interval's t_{n-1} quantile)."""
    n = max(components.n_test, 1)
    se_seed2 = components.var_seed / seeds
    se_test2 = components.var_test / n if components.n_test else 0.0
    z_seed, z_test = rng.standard_normal((2, draws))
    estimate = effect + z_seed * math.sqrt(se_seed2) + z_test * math.sqrt(se_test2)
    estimated_seed2 = se_seed2 * rng.chisquare(seeds - 1, draws) / (seeds - 1)
    half = half_width(estimated_seed2, se_test2, seeds, n_test=n if components.n_test else None)
    return estimate - half, estimate + half


# --------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Allocation:
    """An allocation of seeds, its predicted wall time and each claim's simulated chance of a
    decided verdict (and the number of claims decided in each simulated run)."""

    seeds: dict[str, int]  # experiment -> seeds (0: not run)
    wall_seconds: float
    chances: dict[str, float]  # claim -> P(decided)
    decided_counts: np.ndarray  # per simulated run: claims decided
    steps: dict[str, float] = field(default_factory=dict)  # experiment -> steps factor (1)

    @property
    def expected(self) -> float:
        return float(self.decided_counts.mean())

    def at_least(self, k: int) -> float:
        return float((self.decided_counts >= k).mean())


class SeedPlanner:
    """One run's claims table and sensitivity diagnostics, its experiments' costs and the
    machine's fill factor: predicts any allocation of seeds (``allocation``) and searches them
    (``best``).

    Each distinct interval (a group's comparison and statistic; a group's diagnostic) is
    replayed by simulation at the allocation's seeds; the readings of one interval share its
    draws (C7.2 and C8.2 under INT are one comparison), distinct intervals are drawn
    independently (they share seeds and records in truth: an approximation)."""

    def __init__(
        self, table: pd.DataFrame, gates: pd.DataFrame, groups: dict[str, tuple],
        costs: dict[str, ExperimentCost], reports: float, claims: list[str],
        cores: int, fill: float = 1.0, draws: int = DRAWS, seed: int = 0, decay: float = DECAY,
    ):  # fmt: skip
        missing = sorted(set(groups) - set(costs))
        if missing:
            raise ValueError(f"no job timings for experiment(s) {', '.join(missing)}")
        self.table = table[table["decides"].astype(bool)].reset_index(drop=True)
        self.gates = {tuple(r[k] for k in GROUP_KEYS): r for _, r in gates.iterrows()}
        self.groups, self.costs, self.reports = groups, costs, reports
        self.claims, self.cores, self.fill = claims, cores, fill
        self.draws, self.seed, self.decay = draws, seed, decay
        self.experiment_of = {key: name for name, key in groups.items()}
        self._memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def experiments(self) -> list[str]:
        return sorted(self.groups)

    def wall_seconds(self, seeds: dict[str, int], steps: dict[str, float] | None = None) -> float:
        steps = steps or {}
        jobs = sum(self.costs[name].seconds(s, steps.get(name, 1.0)) for name, s in seeds.items())
        return (jobs + (self.reports if jobs else 0.0)) / self.cores * self.fill

    def _drawn(self, key: tuple, effect: float, components: power.Components, seeds: int):
        """The simulated (low, high) of one interval at ``seeds`` seeds (the same random
        numbers for an interval at every allocation: allocations differ by seeds, not luck)."""
        memo = (key, effect, components, seeds)
        if memo not in self._memo:
            rng = np.random.default_rng([self.seed, seeds, *map(ord, repr(key))])
            self._memo[memo] = simulated_intervals(effect, components, seeds, rng, self.draws)
        return self._memo[memo]

    def _gate_passes(self, group: tuple, seeds: int) -> np.ndarray:
        """Per simulated run: the group's sensitivity diagnostic passes (its interval above 0
        and reaching the minimum effect; no diagnostic: nothing is gated out)."""
        gate = self.gates.get(group)
        if gate is None or not math.isfinite(float(gate["spread"])):
            return np.ones(self.draws, bool)
        n = int(gate["n_test"])
        components = power.Components(
            float(gate["se_seed"]) ** 2 * int(gate["n_seeds"]),
            float(gate["se_test"]) ** 2 * n if n else 0.0, n, n,
        )  # fmt: skip
        low, high = self._drawn(("gate", *group), float(gate["spread"]), components, seeds)
        return (low > 0) & (high >= float(gate["min_effect"]))

    def moves(self, row, factor: float) -> tuple[float, float]:
        """A test row at ``factor`` times its runs' steps: (its effect's further movement, its
        change from the half-way snapshot to the end), from ``extrapolate``; a row that is not
        gated, or has no measured change, does not move."""
        moved = float(row.get("moved", math.nan))
        if str(row.get("trained", NOT_GATED)) == NOT_GATED or not math.isfinite(moved):
            return 0.0, moved
        return extrapolate(moved, factor, self.decay)

    def _row_decisions(self, row, seeds: int, factor: float = 1.0):
        statistic = row["statistic"]
        group = tuple(row[k] for k in GROUP_KEYS)
        effect, threshold = (
            power.on_interval_scale(float(row[name]), statistic) for name in ("effect", "threshold")
        )
        shift, moved = self.moves(row, factor)
        components = power.Components.from_row(row)
        low, high = self._drawn(
            (*group, row["comparison"], statistic), effect + shift, components, seeds
        )
        holds, contradicted = claims.decide(low, high, row["relation"], threshold)
        if str(row.get("sensitivity", claims.NOT_GATED)) != claims.NOT_GATED:
            passes = self._gate_passes(group, seeds)
            holds, contradicted = holds & passes, contradicted & passes
        settled = self.settled(row, seeds, factor)
        return holds & settled, contradicted & settled

    def settled(self, row, seeds: int, factor: float = 1.0) -> np.ndarray:
        """Per simulated run: the test's settled gate passes, its change from the half-way
        snapshot to the end replayed at ``seeds`` seeds, at the change ``moves`` predicts for
        ``factor`` times the steps (more seeds narrow a noisy change; only more steps shrink a
        moving one). A test without a half-way snapshot never passes; one that is not gated
        always does."""
        state = str(row.get("trained", NOT_GATED))
        if state == NOT_GATED:
            return np.ones(self.draws, bool)
        if state == NO_CURVE or not math.isfinite(float(row.get("moved", math.nan))):
            return np.zeros(self.draws, bool)
        n = int(row["n_test"]) if math.isfinite(float(row["n_test"])) else 0
        n_seeds = int(row["moved_n_seeds"])
        components = power.Components(
            float(row["moved_se_seed"]) ** 2 * n_seeds,
            float(row["moved_se_test"]) ** 2 * n if n else 0.0, n, n,
        )  # fmt: skip
        group = tuple(row[k] for k in GROUP_KEYS)
        key = ("settled", *group, row["comparison"], row["statistic"])
        low, high = self._drawn(key, self.moves(row, factor)[1], components, seeds)
        tolerance = float(row["moved_tolerance"])
        return (low > -tolerance) & (high < tolerance)

    def allocation(self, seeds: dict[str, int], steps: dict[str, float] | None = None
                   ) -> Allocation:  # fmt: skip
        """Each claim's chance of a decided verdict at ``seeds`` per experiment, its runs at
        ``steps`` (a factor of their measured steps per experiment; 1 where not named)."""
        steps = {name: float(steps.get(name, 1.0)) for name in seeds} if steps else {}
        holds = {c: np.ones(self.draws, bool) for c in self.claims}
        contradicted = {c: np.zeros(self.draws, bool) for c in self.claims}
        tested = set()
        for _, row in self.table.iterrows():
            name = self.experiment_of.get(tuple(row[k] for k in GROUP_KEYS))
            s = seeds.get(name, 0) if name else 0
            if s < MIN_SEEDS:  # not run, or too few seeds: decides nothing
                continue
            h, c = self._row_decisions(row, s, steps.get(name, 1.0))
            claim = row["claim"]
            tested.add(claim)
            holds[claim] = holds[claim] & h
            contradicted[claim] = contradicted[claim] | c
        decided = {
            c: (contradicted[c] | holds[c]) if c in tested else np.zeros(self.draws, bool)
            for c in self.claims
        }  # fmt: skip
        counts = np.sum(list(decided.values()), axis=0)
        chances = {c: float(d.mean()) for c, d in decided.items()}
        return Allocation(dict(seeds), self.wall_seconds(seeds, steps), chances, counts, steps)

    def best(self, budget_seconds: float, max_seeds: int, drop: bool = False, top: int = 5,
             target: int = 4, factors=(1.0,)) -> list[Allocation]:  # fmt: skip
        """The ``top`` allocations within the budget, by the chance of at least ``target``
        decided claims (then the expected number, then the shorter wall time); every
        experiment keeps at least ``MIN_SEEDS`` seeds unless ``drop``, and trains at one of
        ``factors`` times its measured steps."""
        choices = [(s, float(f)) for s in range(MIN_SEEDS, max_seeds + 1) for f in factors]
        choices = ([(0, 1.0)] if drop else []) + choices
        fits = []
        for combo in itertools.product(choices, repeat=len(self.experiments)):
            seeds = {name: s for name, (s, _) in zip(self.experiments, combo, strict=True)}
            steps = {name: f for name, (_, f) in zip(self.experiments, combo, strict=True)}
            if not any(seeds.values()) or self.wall_seconds(seeds, steps) > budget_seconds:
                continue
            fits.append(self.allocation(seeds, steps))
        fits.sort(key=lambda a: (-a.at_least(target), -a.expected, a.wall_seconds))
        return fits[:top]


# ------------------------------------------------------------------------- from a run


def run_groups(results: Path, records: pd.DataFrame) -> dict[str, tuple]:
    """Experiment (the records' folder under ``results``) -> its (model, task, quantizer)
    group; the quantizer of its quantized records (a full-precision reference says none)."""
    root = Path(results)
    names = records["path"].map(lambda p: Path(p).relative_to(root).parts[0])
    groups = {}
    for name, rows in records.assign(_experiment=names).groupby("_experiment"):
        keys = quantized(rows)[GROUP_KEYS].drop_duplicates()
        if keys.empty:
            continue
        if len(keys) > 1:
            raise ValueError(f"experiment {name} holds records of more than one group")
        groups[str(name)] = tuple(keys.iloc[0])
    return groups


def gate_table(table: pd.DataFrame, diagnostics) -> pd.DataFrame:
    """The sensitivity diagnostics with what planning them needs: their noise components and
    the test size of their group's records."""
    gates = sensitivity_frame(diagnostics)
    sizes = table.groupby(GROUP_KEYS)["n_test"].max()
    gates["n_test"] = [
        int(sizes.get(tuple(r[k] for k in GROUP_KEYS), 0)) for _, r in gates.iterrows()
    ]
    return gates


def planner_from_run(results, cores: int, wall: float | None = None, replicates: int = 1000,
                     decay: float = DECAY):  # fmt: skip
    """A ``SeedPlanner`` for a finished results directory: its records' claims (computed
    again, as ``coalora report claims`` does), their groups' sensitivity and its benchmarks;
    ``wall`` (the run's measured seconds; by default what ``make run`` measured, where it
    did) sets the fill factor."""
    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a results directory")
    if wall is None:
        wall = measured_wall(root)
    paths = run_files(root, RECORD_GLOB)
    if not paths:
        raise FileNotFoundError(f"{root}: no evaluation records ({RECORD_GLOB})")
    records = read_results(paths)
    curve_paths = run_files(root, CURVE_GLOB)
    curves = read_results(curve_paths) if curve_paths else None
    book = claims.load_claims()
    table, diagnostics = claims.evaluate_claims(records, book, replicates, curves)
    costs, reports = experiment_costs(root, training_seconds(root, records))
    groups = run_groups(root, records)
    measured = {name: cost.measured_seeds for name, cost in costs.items() if name in groups}
    fill = 1.0
    if wall is not None:
        jobs = sum(c.seconds(c.measured_seeds) for c in costs.values()) + reports
        fill = wall / (jobs / cores)
    planner = SeedPlanner(
        table, gate_table(table, diagnostics), groups, costs, reports,
        [c.id for c in book.claims], cores, fill, decay=decay,
    )  # fmt: skip
    return planner, measured


# --------------------------------------------------------------------------------- text


def _cell(planner: SeedPlanner, a: Allocation, name: str) -> str:
    """An experiment's seeds, and its steps where the plan varies them ("3x96")."""
    seeds = a.seeds.get(name, 0)
    if not a.steps or not seeds:
        return str(seeds)
    steps = planner.costs[name].steps
    factor = a.steps.get(name, 1.0)
    return f"{seeds}x{round(steps * factor)}" if steps else f"{seeds}x{factor:g}"


def allocation_line(planner: SeedPlanner, a: Allocation, target: int) -> str:
    cells = " ".join(
        f"{_cell(planner, a, name):>{max(len(name), 7)}}" for name in planner.experiments
    )
    claims = ", ".join(f"{c} {p:.2f}" for c, p in a.chances.items() if p >= 0.01) or "none"
    return (
        f"{cells} {a.wall_seconds / 60:8.1f} {a.expected:9.2f} {a.at_least(target):8.2f}   {claims}"
    )


def settling_text(planner: SeedPlanner, measured: dict[str, int], factors) -> list[str]:
    """Per gated test: its measured change from the half-way snapshot to the end, and at each
    steps factor the predicted effect, change and chance of passing the settled gate at the
    run's own seeds."""
    lines = []
    for _, row in planner.table.iterrows():
        if str(row.get("trained", NOT_GATED)) in (NOT_GATED, NO_CURVE):
            continue
        name = planner.experiment_of.get(tuple(row[k] for k in GROUP_KEYS))
        if name is None:
            continue
        steps, seeds = planner.costs[name].steps, measured.get(name, 0)
        lines.append(
            f"  {row['test']} {name}, {row['comparison']} ({row['reading']}): "
            f"{float(row['effect']):+.3g}, moved {float(row['moved']):+.3g} "
            f"[{float(row['moved_low']):+.3g}, {float(row['moved_high']):+.3g}] "
            f"in the second half (tolerance +-{float(row['moved_tolerance']):g})"
        )
        for f in factors:
            shift, moved = planner.moves(row, f)
            chance = planner.settled(row, seeds, f).mean() if seeds >= MIN_SEEDS else 0.0
            at = f"{round(steps * f)} steps" if steps else f"x{f:g} steps"
            lines.append(
                f"    {at:>11}: effect {float(row['effect']) + shift:+.3g}, "
                f"second half {moved:+.3g}, P(settled) {chance:.2f}"
            )
    return lines


def plan_text(planner: SeedPlanner, measured: dict[str, int], budget_minutes: float,
              max_seeds: int, drop: bool, top: int, target: int, factors=(1.0,)) -> str:  # fmt: skip
    """The report of ``coalora plan``: the measured allocation replayed, how far each gated
    test is predicted to move at the planned steps, then the best allocations within the
    budget."""
    names = planner.experiments
    vary = tuple(factors) != (1.0,)
    head = " ".join(f"{n:>{max(len(n), 7)}}" for n in names)
    header = f"{head} {'wall min':>8} {'E[claims]':>9} {f'P(>={target})':>8}   P(decided) per claim"
    fill = (
        f"fill {planner.fill:.3f} (the run's measured wall against its jobs' seconds / cores)"
        if planner.fill != 1.0
        else "fill 1 (no measured wall: the wall time is a floor, not a forecast)"
    )  # fmt: skip
    what = "seeds x steps" if vary else "seeds"
    lines = [
        f"{what} per experiment on {planner.cores} core(s), {fill}; each claim's chance of a "
        f"decided verdict at the run's own effects ({planner.draws} simulated runs; see "
        "coalora/verdicts/seedplan.py for what the model leaves out)",
        "",
        "as measured:",
        header,
        allocation_line(
            planner,
            planner.allocation(measured, dict.fromkeys(measured, 1.0) if vary else None),
            target,
        ),
        "",
    ]
    if vary:
        lines += [
            f"how far each gated test moves at more steps (effect ~ a + b * steps^-{planner.decay:g},"
            " from its measured change; at the run's own seeds):",
            *(settling_text(planner, measured, factors) or ["  no gated test with a curve"]),
            "",
        ]
    best = planner.best(budget_minutes * 60, max_seeds, drop=drop, top=top, target=target,
                        factors=factors)  # fmt: skip
    keep = "" if drop else f", every experiment kept with >= {MIN_SEEDS} seeds"
    steps = f", steps x {'/'.join(f'{f:g}' for f in factors)}" if vary else ""
    lines.append(
        f"best within {budget_minutes:g} min (seeds {MIN_SEEDS}..{max_seeds}{steps}{keep}):"
    )
    if not best:
        lines.append("  none fits: the smallest allocation is over the budget")
    else:
        lines += [header] + [allocation_line(planner, a, target) for a in best]
    return "\n".join(lines)


def plan_from_cli(args) -> None:
    if args.cores < 1 or args.minutes <= 0 or args.max_seeds < MIN_SEEDS or args.target < 1:
        raise ValueError(
            f"--cores, --minutes and --target must be positive, --max-seeds >= {MIN_SEEDS}"
        )
    if args.wall is not None and args.wall <= 0:
        raise ValueError(f"--wall must be positive seconds, got {args.wall}")
    factors = parse_factors(args.steps)
    decay = DECAY if args.decay is None else args.decay
    if not decay > 0:
        raise ValueError(f"--decay must be positive, got {args.decay}")
    planner, measured = planner_from_run(args.results, args.cores, args.wall, decay=decay)
    print(plan_text(planner, measured, args.minutes, args.max_seeds, args.drop, args.top,
                    args.target, factors))  # fmt: skip


def parse_factors(text: str) -> tuple[float, ...]:
    """``--steps``: comma-separated positive factors of the run's own steps ("1,2,4")."""
    try:
        factors = tuple(float(part) for part in text.split(","))
    except ValueError:
        factors = ()
    if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(
            f"--steps must be comma-separated positive factors (e.g. 1,2,4), got {text!r}"
        )
    return tuple(dict.fromkeys(factors))
