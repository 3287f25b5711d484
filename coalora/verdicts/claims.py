"""Verdicts on the paper's claims, with intervals over training seeds and test samples.

Results flow one way: evaluation records -> tables (``coalora.report``) -> claims (here).
The claims, their relations and the paper's own numbers are data (``claims.yaml``); this
module resolves each test's two sides in each (model, task, quantizer) group, computes the
effect per seed under paired bootstrap draws of the test examples, turns it into an interval
(``coalora.verdicts.stats``) and decides:

- *holds*: the whole 95% interval is on the claimed side of the threshold;
- *contradicted*: the whole interval is on the other side;
- *inconclusive at this scale*: the interval spans the threshold, or it does not count seed
  variance (one seed: the effect and its test-sample interval are shown, undecided), or
  there is no interval (a single measurement).

A test with a non-inferiority margin is decided twice (``reading``: superior, comparable);
the claim follows the comparable one, the paper's "comparable or superior". A claim's overall
verdict: contradicted if any of its tests is, holds if all hold, else inconclusive; *not
tested* where no group has both sides. Tests of configuration-awareness (``gated``) in a
group whose reference method cannot tell its budgets apart (``coalora.verdicts.sensitivity``) stay
inconclusive and say so. Each row also names the paper's effect against our interval
(``coalora.verdicts.paper``), its scale (seeds, configurations, test examples, steps), any deviation
from the paper's protocol (unequal optimizer steps per run, K != 2 configurations per
CoA-LoRA step) and, for an open test, what would decide it (``coalora.verdicts.power``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import report
from ..methods import Serves
from . import power
from .claimbook import COMPARABLE, READINGS, SUPERIOR, Claim, ClaimBook, ClaimTest, load_claims
from .paper import format_value, paper_position, paper_text, paper_values
from .sensitivity import Sensitivity, diagnose
from .settled import (
    NO_CURVE,
    NOT_GATED,
    SETTLED,
    SETTLING_COLUMNS,
    Settling,
    at_snapshot,
    exposure_share,
    exposure_text,
    settle,
    snapshot_fractions,
    steps_text,
)
from .stats import (
    BOOTSTRAP_REPLICATES,
    Interval,
    combine,
    example_count,
    log_ratio_interval,
    resampled_values,
)

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive at this scale"
NOT_TESTED = "not tested at this scale"
PAPER_K = 2  # configurations per CoA-LoRA step in the paper


def decide(low, high, relation: str, threshold: float):
    """(holds, contradicted) of an interval ``[low, high]`` under a relation to a threshold
    (see the module docstring); numbers or arrays of them (the seed planner decides many
    simulated intervals at once, ``coalora.verdicts.seedplan``)."""
    if relation == "greater":
        return low > threshold, high < threshold
    if relation == "less":
        return high < threshold, low > threshold
    if relation == "within":
        return (-threshold < low) & (high < threshold), (high < -threshold) | (low > threshold)
    raise ValueError(f"unknown relation {relation!r}")


def verdict(interval: Interval, relation: str, threshold: float) -> str:
    """Decide a relation on an interval; an interval that does not count seed variance (one
    seed) decides nothing."""
    if not interval.counts_seeds:
        return INCONCLUSIVE
    holds, contradicted = decide(interval.low, interval.high, relation, threshold)
    return HOLDS if holds else CONTRADICTED if contradicted else INCONCLUSIVE


def overall_verdict(verdicts: list[str]) -> str:
    if not verdicts:
        return NOT_TESTED
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# --------------------------------------------------------------------------- one group


class GroupEvidence:
    """One group's quantized rows with their metric under paired test resamplings."""

    def __init__(self, group: report.Group, replicates: int = BOOTSTRAP_REPLICATES):
        self.group = group
        rows = report.quantized(group.rows).reset_index(drop=True)
        if "per_example" not in rows:
            rows["per_example"] = None
        rows["_row"] = np.arange(len(rows))  # the row of each record in ``values``
        self.rows = rows
        records = rows.to_dict("records")
        self.values = resampled_values(records, group.metric, replicates)
        self.columns = self.values.shape[1]
        # the examples each bootstrap column resamples (None: not resampled)
        self.n_test = example_count(records[0]["per_example"]) if self.columns > 1 else None

    # -- sides (frames of ``rows``; their index is the row in ``values``)
    def label_rows(self, label: str) -> pd.DataFrame:
        return self.rows[self.rows["method"] == label]

    def search_rows(self, mode: str) -> pd.DataFrame:
        rows = report.search_rows(self.group)
        labels = set(rows.loc[rows["search_mode"] == mode, "method"])
        return self.rows[self.rows["method"].isin(labels)]

    def rank_sides(self, label: str) -> list[tuple[str, pd.DataFrame, str, pd.DataFrame]]:
        """(a name, a rows, b name, b rows) per rank of ``label``'s trained method and per
        other trained method run at that rank (settings other than r as the main labels)."""
        rows = self.rows.dropna(subset=["r"])
        main = rows[rows["method"] == label]
        if main.empty:
            return []
        trained = main["trained_method"].iloc[0]
        mine = report.one_factor(rows[rows["trained_method"] == trained], trained, "r")
        sides = []
        for r, a_rows in mine.groupby("r", sort=True):
            for other, o in rows[rows["trained_method"] != trained].groupby("trained_method"):
                peers = report.one_factor(o, other, "r")
                peers = peers[peers["r"] == r]
                for b_label, b_rows in peers.groupby("method", sort=True):
                    a_label = a_rows["method"].iloc[0]
                    sides.append(
                        (f"{a_label} (r={int(r)})", a_rows, f"{b_label} (r={int(r)})", b_rows)
                    )
        return sides

    def test_sides(
        self, test: ClaimTest
    ) -> list[tuple[str, pd.DataFrame, str | None, pd.DataFrame | None]]:
        """A test's comparisons in this group: (a name, a rows, b name, b rows), b None for a
        one-sided statistic; none when a side is missing."""
        if test.per_rank:
            return self.rank_sides(test.a)
        if test.b is None:
            name, rows = self.side(test.a)
            return [(name, rows, None, None)] if len(rows) else []
        (a_name, a), (b_name, b) = self.side(test.a), self.side(test.b)
        return [(a_name, a, b_name, b)] if len(a) and len(b) else []

    def statistic(self, test: ClaimTest, a, b, seeds, matrix: bool = False):
        """The test's statistic on sides ``a``, ``b`` at ``seeds``: the interval, or the
        per-seed effect matrix (``matrix``; not for a time ratio, which has no test sample)."""
        if test.statistic == "time_ratio":
            if matrix:
                raise ValueError("a time ratio has no per-example effects")
            return time_ratio(a, b, seeds)
        if test.statistic == "unseen_gap":
            return self.unseen_gap(a, seeds, matrix)
        return getattr(self, test.statistic)(a, b, seeds, matrix)

    def side(self, spec) -> tuple[str, pd.DataFrame]:
        if isinstance(spec, str):
            return spec, self.label_rows(spec)
        if set(spec) == {"search_mode"}:
            rows = self.search_rows(spec["search_mode"])
            labels = sorted(set(rows["method"]))
            return (" + ".join(labels) or f"search_mode={spec['search_mode']}"), rows
        raise ValueError(f"claims: cannot resolve side {spec!r}")

    # -- statistics: each prepares per-seed arrays once, then loops over value columns
    def _per_seed(self, seeds, prepare, effect, matrix: bool = False):
        """``prepare(seed)`` -> arrays of that seed; ``effect(arrays, column)`` -> float. The
        interval, or with ``matrix`` the per-seed effects under each value column (seeds x
        columns, what ``stats.combine`` takes: the settled gate differences two of them)."""
        prepared = {s: prepare(s) for s in seeds}
        per_seed = np.array(
            [[effect(prepared[s], c) for c in range(self.columns)] for s in seeds], dtype=float
        )
        return per_seed if matrix else combine(per_seed, n_test=self.n_test)

    def _scale(self, values):
        return report.gap_scale(values, self.group.higher_is_better)

    def hv_diff(self, a: pd.DataFrame, b: pd.DataFrame, seeds, matrix: bool = False):
        higher, worst = self.group.higher_is_better, self.group.worst

        def prepare(seed):
            a_s, b_s = a[a["seed"] == seed], b[b["seed"] == seed]
            return [(r.index.to_numpy(), r["avg_bits"].to_numpy(float)) for r in (a_s, b_s)]

        def effect(sides, column):
            (ia, bits_a), (ib, bits_b) = sides
            hv_a = report.hv_of(bits_a, self.values[ia, column], higher, worst)
            return hv_a - report.hv_of(bits_b, self.values[ib, column], higher, worst)

        return self._per_seed(seeds, prepare, effect, matrix)

    def gap(self, a: pd.DataFrame, b: pd.DataFrame, seeds, matrix: bool = False):
        def prepare(seed):
            a_s = a[a["seed"] == seed].set_index("config_name")
            b_s = b[b["seed"] == seed].set_index("config_name")
            shared = a_s.index.intersection(b_s.index)
            return a_s.loc[shared, "_row"].to_numpy(), b_s.loc[shared, "_row"].to_numpy()

        def effect(rows, column):
            ia, ib = rows
            if not len(ia):
                return math.nan
            diff = self._scale(self.values[ia, column]) - self._scale(self.values[ib, column])
            return float(diff.mean())

        return self._per_seed(seeds, prepare, effect, matrix)

    def unseen_seeds(self, a: pd.DataFrame, seeds) -> list[int]:
        """The seeds at which some unseen configuration lies inside the seen bit range (a
        search may drop an end of the range at one seed and not at another)."""
        out = []
        for seed in seeds:
            rows = a[a["seed"] == seed]
            seen, unseen = (
                rows.loc[~rows["unseen"], "avg_bits"],
                rows.loc[rows["unseen"], "avg_bits"],
            )
            if report.matched_difference(seen, seen, unseen, unseen)[0]:  # points matched
                out.append(seed)
        return out

    def unseen_gap(self, a: pd.DataFrame, seeds, matrix: bool = False):
        def prepare(seed):
            rows = a[a["seed"] == seed]
            seen, unseen = rows[~rows["unseen"]], rows[rows["unseen"]]
            return [(r["_row"].to_numpy(), r["avg_bits"].to_numpy(float)) for r in (seen, unseen)]

        def effect(sides, column):
            (seen_rows, seen_bits), (unseen_rows, unseen_bits) = sides
            y_seen = self._scale(self.values[seen_rows, column])
            y_unseen = self._scale(self.values[unseen_rows, column])
            return report.matched_difference(seen_bits, y_seen, unseen_bits, y_unseen)[1]

        return self._per_seed(seeds, prepare, effect, matrix)


def time_ratio(a: pd.DataFrame, b: pd.DataFrame, seeds) -> Interval:
    seconds_a, seconds_b = report.run_totals_per_seed(a), report.run_totals_per_seed(b)
    ratios = [float(seconds_a[s]) / float(seconds_b[s]) for s in seeds]
    return log_ratio_interval(ratios)


# --------------------------------------------------------------------------- rows


def _steps_per_run(rows: pd.DataFrame) -> list[int]:
    runs = rows.drop_duplicates(["seed", "hashes.checkpoint"])["train_steps"].dropna()
    return sorted({int(s) for s in runs})


def _configs_per_step(rows: pd.DataFrame) -> set[int]:
    settings = rows["protocol"].map(lambda p: (p or {}).get("train_settings") or {})
    return {int(s.get("configs_per_step", PAPER_K)) for s in settings}


def compute_dtypes(rows: pd.DataFrame) -> list[str]:
    """The compute dtypes the rows' training and evaluation passes ran in (records older than
    the setting ran in float32), sorted."""
    found = set()
    for protocol in rows["protocol"]:
        protocol = protocol if isinstance(protocol, dict) else {}
        found.add(protocol.get("dtype") or "float32")
        if protocol.get("trained_method"):
            found.add(protocol.get("train_dtype") or "float32")
    return sorted(found)


def deviations(sides: list[tuple[str, pd.DataFrame]]) -> str:
    """How the compared runs depart from the paper's protocol (empty: they do not)."""
    notes = []
    if any(isinstance(p, dict) and "rehearsal" in p for _, rows in sides for p in rows["protocol"]):
        notes.append("REHEARSAL: stand-in models and data at micro scale, not results")
    dtypes = {name: compute_dtypes(rows) for name, rows in sides}
    if len({d for found in dtypes.values() for d in found}) > 1:
        listed = ", ".join(f"{n} {'/'.join(d)}" for n, d in dtypes.items())
        notes.append(f"mixed compute dtypes ({listed})")
    steps = {name: _steps_per_run(rows) for name, rows in sides}
    if len({tuple(s) for s in steps.values()}) > 1 or any(len(s) > 1 for s in steps.values()):
        listed = ", ".join(f"{n} {'/'.join(map(str, s))}" for n, s in steps.items())
        notes.append(f"unequal optimizer steps per run ({listed})")
    for name, rows in sides:
        coa = rows[rows["serves"] == Serves.ANY_CONFIGURATION]
        ks = _configs_per_step(coa) - {PAPER_K} if len(coa) else set()
        if ks:
            notes.append(f"{name}: K = {'/'.join(map(str, sorted(ks)))} configurations per step")
    return "; ".join(notes)


def _n_examples(rows: pd.DataFrame) -> str:
    per = rows["per_example"].dropna()
    if per.empty:
        return "no per-example outcomes"
    first = per.iloc[0]
    if "window_nll" in first:
        return f"{len(first['window_nll'])} test windows"
    return f"{len(first['labels'])} test examples"


def scale_of(evidence: GroupEvidence, rows: pd.DataFrame, seeds) -> str:
    g = evidence.group
    steps = _steps_per_run(rows)
    steps_text = "/".join(map(str, steps)) if steps else "no"
    return (
        f"{g.model} / {g.task} / {g.quantizer}: {len(seeds)} seed(s) {list(map(int, seeds))}, "
        f"{rows['config_name'].nunique()} configurations, {_n_examples(rows)}, "
        f"{steps_text} steps per run, {'/'.join(compute_dtypes(rows))}"
    )


def smallest_margin(interval: Interval, relation: str, threshold: float) -> float:
    """The smallest margin at which a non-inferiority reading would hold (clipped at 0;
    NaN for an interval that cannot carry a verdict)."""
    if not interval.counts_seeds:
        return math.nan
    if relation == "greater":
        return max(0.0, threshold - interval.low)
    return max(0.0, interval.high - threshold)


UNITS = {"hv_diff": "HV", "time_ratio": "ratio", "unseen_gap": "", "gap": ""}
PLAN_COLUMNS = [
    f"plan_{what}_{at}"
    for at in ("paper", "ours")
    for what in ("seeds", "examples", "core_seconds")
]

CLAIM_COLUMNS = [
    "claim", "test", "model", "task", "quantizer", "comparison", "statistic", "unit",
    "paper", "paper_position", "effect", "low", "high", "reading", "relation", "threshold",
    "margin", "smallest_margin", "verdict", "decides", "sensitivity", "trained", "settling",
    *SETTLING_COLUMNS, "exposure", "exposure_a", "exposure_b", "noise", "n_seeds",
    "to_decide", *PLAN_COLUMNS, "se_seed", "se_test", "n_test", "max_test", *power.SECONDS,
    "scale", "deviations",
]  # fmt: skip


# Columns that come from measured seconds (the price of deciding), which differ from run to
# run even where every number of the evaluations is bit-identical.
SECONDS_COLUMNS = [
    "to_decide",
    *(c for c in PLAN_COLUMNS if c.endswith("core_seconds")),
    *power.SECONDS,
]


def _unit(statistic: str, group: report.Group) -> str:
    if statistic in ("gap", "unseen_gap"):
        return "points" if group.higher_is_better else "100*dln(ppl)"
    return UNITS[statistic]


def _common_seeds(*frames: pd.DataFrame) -> list[int]:
    seeds = None
    for frame in frames:
        mine = set(frame["seed"].astype(int))
        seeds = mine if seeds is None else seeds & mine
    return sorted(seeds or [])


@dataclass
class GroupContext:
    """What every test of one group shares: its evidence, its sensitivity diagnostic and
    the test examples a plan may use."""

    evidence: GroupEvidence
    sensitivity: Sensitivity
    max_examples: int
    half: GroupEvidence | None = None  # the half-way snapshot's records (the settled gate)


def _sensitivity_text(claim, test, context, raw_verdict) -> str:
    if not claim.gates(test):
        return NOT_GATED
    text = context.sensitivity.text()
    if context.sensitivity.flat and raw_verdict != INCONCLUSIVE:
        text += f" (the interval alone: {raw_verdict})"
    return text


def _settling(test, context, book, sides, half_sides, seeds) -> Settling:
    """The settled gate of one comparison (``coalora.verdicts.settled``)."""
    a_name, a, b_name, b = sides
    tolerance = book.settle_tolerance(test.statistic, context.evidence.group)
    if tolerance is None:
        return Settling(NOT_GATED)
    if (a_name, b_name) not in half_sides:
        return Settling(NO_CURVE)
    ha, hb = half_sides[(a_name, b_name)]
    common = [s for s in seeds if s in set(_common_seeds(*([ha] if hb is None else [ha, hb])))]
    if len(common) != len(seeds):
        return Settling(NO_CURVE)
    final = context.evidence.statistic(test, a, b, seeds, matrix=True)
    half = context.half.statistic(test, ha, hb, seeds, matrix=True)
    steps = steps_text(pd.concat([a, b]), pd.concat([ha, hb]))
    return settle(final, half, tolerance.value, steps, context.evidence.n_test)


def _to_decide(test, interval, statistic, threshold, paper, components, book) -> dict:
    """The plans at the paper's effect and at ours (``coalora.verdicts.power``), as text and numbers."""

    def scale(x):
        return power.on_interval_scale(x, statistic)

    targets = {"ours": scale(interval.effect)}
    if paper:
        targets["paper"] = float(np.mean([scale(v) for v in paper]))
    out = dict.fromkeys(PLAN_COLUMNS, math.nan)
    texts = []
    for at in ("paper", "ours"):
        if at not in targets:
            texts.append("at the paper's effect: n/a")
            continue
        shown = math.exp(targets[at]) if statistic == "time_ratio" else targets[at]
        p = power.plan(
            components, targets[at], test.relation, scale(threshold),
            target=book.planning["power"], max_seeds=book.planning["max_seeds"],
        )  # fmt: skip
        texts.append(
            f"at {'the paper' if at == 'paper' else 'our'} effect {format_value(shown, statistic)}: {p.text()}"
        )
        if p.decidable:
            out.update(
                {f"plan_seeds_{at}": p.seeds, f"plan_examples_{at}": p.test_examples,
                 f"plan_core_seconds_{at}": p.core_seconds}
            )  # fmt: skip
    out["to_decide"] = "; ".join(texts)
    return out


def rows_of_test(
    claim: Claim, index: int, test: ClaimTest, context: GroupContext, book: ClaimBook
) -> list[dict]:
    """The rows of one test in one group (none when a side is missing): one per comparison
    and reading."""
    evidence = context.evidence
    g = evidence.group
    sides = evidence.test_sides(test)
    half_sides = {(an, bn): (ha, hb) for an, ha, bn, hb in context.half.test_sides(test)} if (
        context.half is not None
    ) else {}  # fmt: skip
    out = []
    paper = paper_values(test, book)
    for a_name, a, b_name, b in sides:
        frames = [a] if b is None else [a, b]
        seeds = _common_seeds(*frames)
        if test.statistic == "unseen_gap":
            seeds = evidence.unseen_seeds(a, seeds)
        if not seeds:
            continue
        interval = evidence.statistic(test, a, b, seeds)
        if not math.isfinite(interval.effect):
            continue
        settling = _settling(test, context, book, (a_name, a, b_name, b), half_sides, seeds)
        exposed = [(a_name, a)] + ([] if b is None else [(b_name, b)])
        both = pd.concat(frames)
        evaluated = test.statistic != "time_ratio"  # a time ratio has no test sample
        n_test = power.measured_examples(both) if evaluated else 0
        components = power.Components.of(
            interval, n_test, context.max_examples if n_test else 0,
            **power.seconds_per_seed(both, seeds, evaluations=evaluated),
        )  # fmt: skip
        common = {
            "claim": claim.id,
            "test": f"{claim.id}.{index + 1}",
            **g.key,
            "comparison": a_name if b is None else f"{a_name} vs {b_name}",
            "statistic": test.statistic,
            "unit": _unit(test.statistic, g),
            "paper": paper_text(test, book),
            "paper_position": paper_position(paper, interval, test.statistic),
            "effect": interval.effect,
            "low": interval.low,
            "high": interval.high,
            "relation": test.relation,
            "noise": interval.noise,
            "n_seeds": interval.n_seeds,
            # what the planner needs to re-plan from this row (power.Components.from_row)
            "se_seed": interval.se_seed,
            "se_test": interval.se_test,
            "n_test": components.n_test,
            "max_test": components.max_test,
            **{name: getattr(components, name) for name in power.SECONDS},
            "scale": scale_of(evidence, both[both["seed"].isin(seeds)], seeds),
            "trained": settling.state,
            **settling.columns(),
            "exposure": "; ".join(
                exposure_text(name, rows[rows["seed"].isin(seeds)]) for name, rows in exposed
            ),
            "exposure_a": exposure_share(a[a["seed"].isin(seeds)]),
            "exposure_b": math.nan if b is None else exposure_share(b[b["seed"].isin(seeds)]),
            "deviations": deviations([(a_name, a)] + ([] if b is None else [(b_name, b)])),
        }
        readings = test.readings(book.margins, g)
        for reading, threshold, margin in readings:
            raw = verdict(interval, test.relation, threshold)
            gated_out = claim.gates(test) and context.sensitivity.flat
            unsettled = settling.state not in (SETTLED, NOT_GATED)
            final = INCONCLUSIVE if gated_out or unsettled else raw
            row = {
                **common,
                "reading": reading,
                "threshold": threshold,
                "margin": margin,
                "smallest_margin": (
                    smallest_margin(interval, test.relation, test.threshold)
                    if reading == COMPARABLE else math.nan
                ),
                "verdict": final,
                "decides": reading == readings[-1][0],  # the paper's wording: the weakest
                "sensitivity": _sensitivity_text(claim, test, context, raw),
                "settling": settling.text()
                + (f" (the interval alone: {raw})" if unsettled and raw != INCONCLUSIVE else ""),
                **dict.fromkeys(PLAN_COLUMNS, math.nan),
            }  # fmt: skip
            if final != INCONCLUSIVE:
                row["to_decide"] = "decided"
            elif not interval.counts_seeds:
                row["to_decide"] = (
                    "unknown: one seed gives no seed-to-seed variance to plan from"
                    if interval.n_seeds < 2
                    else "unknown: no interval"
                )
            else:
                row.update(
                    _to_decide(test, interval, test.statistic, threshold, paper, components, book)
                )
            out.append(row)
    return out


def evaluate_claims(
    results: pd.DataFrame,
    book: ClaimBook | None = None,
    replicates: int = BOOTSTRAP_REPLICATES,
    curves: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[Sensitivity]]:
    """The claims table (one row per claim test, group, comparison and reading: effect,
    interval, verdict, scale, whether training settled, exposure, what deciding would take)
    and each group's sensitivity. ``curves``: the runs' snapshot records (their learning
    curves), which the settled gate reads; without them no test is settled."""
    book = book or load_claims()
    half_groups = {}
    if curves is not None and book.settled["snapshot"] in snapshot_fractions(curves):
        half = at_snapshot(results, curves, book.settled["snapshot"])
        half_groups = {tuple(g.key.values()): g for g in report.experiment_groups(half)}
    rows, diagnostics = [], []
    for group in report.experiment_groups(results):
        if report.quantized(group.rows).empty:
            continue
        context = None
        for claim in book.claims:
            if not claim.applies_to(group):
                continue
            if context is None:
                evidence = GroupEvidence(group, replicates)
                diagnostic = diagnose(
                    evidence, _unit("gap", group), book.min_effect_of(group), book.ceiling,
                    replicates,
                )  # fmt: skip
                cap = book.planning["max_test_examples"]
                half_group = half_groups.get(tuple(group.key.values()))
                context = GroupContext(
                    evidence, diagnostic, power.available_examples(evidence.rows, cap),
                    None if half_group is None else GroupEvidence(half_group, replicates),
                )  # fmt: skip
                diagnostics.append(diagnostic)
            for index, test in enumerate(claim.tests):
                rows += rows_of_test(claim, index, test, context, book)
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS), diagnostics


CURVE_COLUMNS = [
    "test", *report.GROUP_KEYS, "comparison", "reading", "unit", "fraction", "steps", "effect",
    "low", "high", "n_seeds",
]  # fmt: skip


def snapshot_effects(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    book: ClaimBook | None = None,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> pd.DataFrame:
    """Each test's deciding reading at every snapshot and at the end (``fraction`` 1): its
    effect and interval computed from the records as they stood then
    (``settled.at_snapshot``), as the claims table computes them at the end."""
    book = book or load_claims()
    rows = []
    for fraction in [*snapshot_fractions(curves), 1.0]:
        records = results if fraction == 1.0 else at_snapshot(results, curves, fraction)
        table, _ = evaluate_claims(records, book, replicates)
        steps = _group_steps(records)
        for r in table[table["decides"].astype(bool)].to_dict("records"):
            key = tuple(r[k] for k in report.GROUP_KEYS)
            rows.append({**{c: r.get(c) for c in CURVE_COLUMNS}, "fraction": fraction,
                         "steps": steps.get(key, "")})  # fmt: skip
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _group_steps(records: pd.DataFrame) -> dict[tuple, str]:
    """Per group key, the optimizer steps its trained records had (several: joined by /)."""
    trained = records.dropna(subset=["train_steps"])
    return {
        key: "/".join(str(int(s)) for s in sorted(set(rows["train_steps"])))
        for key, rows in trained.groupby(list(report.GROUP_KEYS))
    }


def claims_table(
    results: pd.DataFrame,
    book: ClaimBook | None = None,
    replicates: int = BOOTSTRAP_REPLICATES,
    curves: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``evaluate_claims``' table."""
    return evaluate_claims(results, book, replicates, curves)[0]


SUMMARY_COLUMNS = [
    "claim", "statement", "verdict", "reading", "tests", "holds", "contradicted", "inconclusive",
]  # fmt: skip
TEST_KEYS = ["test", *report.GROUP_KEYS, "comparison"]


def decided_by(table: pd.DataFrame) -> pd.Series:
    """Per deciding row (``decides``), the reading its verdict rests on: a comparable row
    whose superior reading holds too is *superior*; every other row its own reading."""
    superior = table[(table["reading"] == SUPERIOR) & (table["verdict"] == HOLDS)]
    strong = set(map(tuple, superior[TEST_KEYS].to_numpy()))
    deciding = table[table["decides"].astype(bool)]
    keys = map(tuple, deciding[TEST_KEYS].to_numpy())
    return pd.Series(
        [SUPERIOR if r == COMPARABLE and k in strong else r
         for r, k in zip(deciding["reading"], keys, strict=True)],
        index=deciding.index, dtype=object,
    )  # fmt: skip


def claims_summary(table: pd.DataFrame, book: ClaimBook | None = None) -> pd.DataFrame:
    """One row per claim of the book: its overall verdict over its tests' deciding rows (the
    paper's wording: "comparable or superior" holds if comparable holds), and which reading
    decided each test."""
    book = book or load_claims()
    readings = decided_by(table)
    deciding = table[table["decides"].astype(bool)].assign(decided_by=readings)
    rows = []
    for claim in book.claims:
        mine = deciding[deciding["claim"] == claim.id]
        verdicts = mine["verdict"].tolist()
        by_reading = [
            f"{', '.join(sorted(set(mine.loc[mine['decided_by'] == r, 'test'])))} {r}"
            for r in READINGS if (mine["decided_by"] == r).any()
        ]  # fmt: skip
        rows.append(
            {
                "claim": claim.id,
                "statement": claim.claim,
                "verdict": overall_verdict(verdicts),
                "reading": "; ".join(by_reading),
                "tests": len(verdicts),
                "holds": verdicts.count(HOLDS),
                "contradicted": verdicts.count(CONTRADICTED),
                "inconclusive": verdicts.count(INCONCLUSIVE),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
