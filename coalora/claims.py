"""Verdicts on the paper's claims, with intervals over training seeds and test samples.

Results flow one way: evaluation records -> tables (``coalora.report``) -> claims (here).
The claims, their relations and the paper's own numbers are data (``claims.yaml``); this
module resolves each test's two sides in each (model, task, quantizer) group, computes the
effect per seed under paired bootstrap draws of the test examples, turns it into an interval
(``coalora.stats``) and decides:

- *holds*: the whole 95% interval is on the claimed side of the threshold;
- *contradicted*: the whole interval is on the other side;
- *inconclusive at this scale*: the interval spans the threshold, or it does not count seed
  variance (one seed: the effect and its test-sample interval are shown, undecided), or
  there is no interval (a single measurement).

A claim's overall verdict: contradicted if any of its tests is, holds if all hold, else
inconclusive; *not tested* where no group has both sides. Each row also names its scale
(seeds, configurations, test examples, steps) and any deviation from the paper's protocol
(unequal optimizer steps per run, K != 2 configurations per CoA-LoRA step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import report
from .methods import Serves
from .stats import BOOTSTRAP_REPLICATES, Interval, interval_of, log_ratio_interval, resampled_values

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
STATISTICS = ("hv_diff", "gap", "time_ratio", "unseen_gap")
RELATIONS = ("greater", "less", "within")
HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive at this scale"
NOT_TESTED = "not tested at this scale"
PAPER_K = 2  # configurations per CoA-LoRA step in the paper


@dataclass(frozen=True)
class ClaimTest:
    """One testable relation of a claim (a row of ``claims.yaml``)."""

    statistic: str
    a: str | dict
    relation: str
    threshold: float
    b: str | dict | None = None
    per_rank: bool = False
    paper: str | None = None

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"claims: statistic {self.statistic!r} is not one of {STATISTICS}")
        if self.relation not in RELATIONS:
            raise ValueError(f"claims: relation {self.relation!r} is not one of {RELATIONS}")
        if (self.b is None) != (self.statistic == "unseen_gap"):
            raise ValueError(f"claims: {self.statistic} needs {'no' if self.b is None else 'a'} b")


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    groups: dict
    tests: tuple[ClaimTest, ...] = field(default_factory=tuple)

    def applies_to(self, group: report.Group) -> bool:
        metric = self.groups.get("metric", "any")
        quantizer = self.groups.get("quantizer", "any")
        if metric != "any" and (metric == "higher") != group.higher_is_better:
            return False
        return quantizer in ("any", group.quantizer)


@dataclass(frozen=True)
class ClaimBook:
    claims: tuple[Claim, ...]
    paper_table1: dict
    paper_scale: str


def load_claims(path: str | Path = CLAIMS_FILE) -> ClaimBook:
    """The claims file, checked: unknown keys and bad values are one-line errors."""
    data = yaml.safe_load(Path(path).read_text())
    unknown = set(data) - {"paper_table1", "paper_scale", "claims"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
    claims = []
    for entry in data["claims"]:
        extra = set(entry) - {"id", "claim", "groups", "tests"}
        if extra:
            raise ValueError(f"{path}: claim {entry.get('id')!r}: unknown key(s) {sorted(extra)}")
        tests = tuple(ClaimTest(**test) for test in entry["tests"])
        claims.append(Claim(entry["id"], entry["claim"], dict(entry.get("groups", {})), tests))
    return ClaimBook(tuple(claims), data["paper_table1"], data["paper_scale"])


def verdict(interval: Interval, relation: str, threshold: float) -> str:
    """Decide a relation on an interval (see the module docstring); an interval that does
    not count seed variance (one seed) decides nothing."""
    if not interval.counts_seeds:
        return INCONCLUSIVE
    low, high = interval.low, interval.high
    if relation == "greater":
        return HOLDS if low > threshold else CONTRADICTED if high < threshold else INCONCLUSIVE
    if relation == "less":
        return HOLDS if high < threshold else CONTRADICTED if low > threshold else INCONCLUSIVE
    if relation == "within":
        if -threshold < low and high < threshold:
            return HOLDS
        return CONTRADICTED if high < -threshold or low > threshold else INCONCLUSIVE
    raise ValueError(f"unknown relation {relation!r}")


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

    def side(self, spec) -> tuple[str, pd.DataFrame]:
        if isinstance(spec, str):
            return spec, self.label_rows(spec)
        if set(spec) == {"search_mode"}:
            rows = self.search_rows(spec["search_mode"])
            labels = sorted(set(rows["method"]))
            return (" + ".join(labels) or f"search_mode={spec['search_mode']}"), rows
        raise ValueError(f"claims: cannot resolve side {spec!r}")

    # -- statistics: each prepares per-seed arrays once, then loops over value columns
    def _per_seed(self, seeds, prepare, effect) -> Interval:
        """``prepare(seed)`` -> arrays of that seed; ``effect(arrays, column)`` -> float."""
        prepared = {s: prepare(s) for s in seeds}
        return interval_of(lambda s, c: effect(prepared[s], c), seeds, self.columns)

    def _scale(self, values):
        return report.gap_scale(values, self.group.higher_is_better)

    def hv_diff(self, a: pd.DataFrame, b: pd.DataFrame, seeds) -> Interval:
        higher, worst = self.group.higher_is_better, self.group.worst

        def prepare(seed):
            a_s, b_s = a[a["seed"] == seed], b[b["seed"] == seed]
            return [(r.index.to_numpy(), r["avg_bits"].to_numpy(float)) for r in (a_s, b_s)]

        def effect(sides, column):
            (ia, bits_a), (ib, bits_b) = sides
            hv_a = report.hv_of(bits_a, self.values[ia, column], higher, worst)
            return hv_a - report.hv_of(bits_b, self.values[ib, column], higher, worst)

        return self._per_seed(seeds, prepare, effect)

    def gap(self, a: pd.DataFrame, b: pd.DataFrame, seeds) -> Interval:
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

        return self._per_seed(seeds, prepare, effect)

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

    def unseen_gap(self, a: pd.DataFrame, seeds) -> Interval:
        def prepare(seed):
            rows = a[a["seed"] == seed]
            seen, unseen = rows[~rows["unseen"]], rows[rows["unseen"]]
            return [(r["_row"].to_numpy(), r["avg_bits"].to_numpy(float)) for r in (seen, unseen)]

        def effect(sides, column):
            (seen_rows, seen_bits), (unseen_rows, unseen_bits) = sides
            y_seen = self._scale(self.values[seen_rows, column])
            y_unseen = self._scale(self.values[unseen_rows, column])
            return report.matched_difference(seen_bits, y_seen, unseen_bits, y_unseen)[1]

        return self._per_seed(seeds, prepare, effect)


def _run_seconds(rows: pd.DataFrame, seed: int) -> float:
    """Total fine-tuning seconds of one seed's runs (one per distinct checkpoint)."""
    runs = rows[rows["seed"] == seed].drop_duplicates("hashes.checkpoint")
    return float(runs["train_seconds"].fillna(0).sum())


def time_ratio(a: pd.DataFrame, b: pd.DataFrame, seeds) -> Interval:
    ratios = [_run_seconds(a, s) / _run_seconds(b, s) for s in seeds]
    return log_ratio_interval(ratios)


# --------------------------------------------------------------------------- rows


def _steps_per_run(rows: pd.DataFrame) -> list[int]:
    runs = rows.drop_duplicates(["seed", "hashes.checkpoint"])["train_steps"].dropna()
    return sorted({int(s) for s in runs})


def _configs_per_step(rows: pd.DataFrame) -> set[int]:
    settings = rows["protocol"].map(lambda p: (p or {}).get("train_settings") or {})
    return {int(s.get("configs_per_step", PAPER_K)) for s in settings}


def deviations(sides: list[tuple[str, pd.DataFrame]]) -> str:
    """How the compared runs depart from the paper's protocol (empty: they do not)."""
    notes = []
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
        f"{steps_text} steps per run"
    )


def paper_cells(test: ClaimTest, book: ClaimBook) -> dict[str, str]:
    """The paper's value of a test per GLUE task, from its main table ({} when the test's
    sides are not both in it, or it has its own ``paper`` text)."""
    table = book.paper_table1
    if test.paper or not (isinstance(test.a, str) and isinstance(test.b, str)):
        return {}
    if test.a not in table or test.b not in table:
        return {}
    cells = {}
    for task in table[test.a]:
        (hv_a, gap_a, min_a), (hv_b, gap_b, min_b) = table[test.a][task], table[test.b][task]
        if test.statistic == "hv_diff":
            cells[task] = f"{hv_a - hv_b:+.2f}"
        elif test.statistic == "gap":
            cells[task] = f"{(gap_a or 0.0) - (gap_b or 0.0):+.2f}"
        elif test.statistic == "time_ratio":
            cells[task] = f"{min_a / min_b:.2f}"
    return cells


def _paper_value(test: ClaimTest, book: ClaimBook) -> str:
    if test.paper:
        return test.paper
    return ", ".join(f"{task} {value}" for task, value in paper_cells(test, book).items())


UNITS = {"hv_diff": "HV", "time_ratio": "ratio", "unseen_gap": "", "gap": ""}

CLAIM_COLUMNS = [
    "claim", "test", "model", "task", "quantizer", "comparison", "statistic", "unit",
    "paper", "effect", "low", "high", "relation", "threshold", "verdict", "noise",
    "n_seeds", "scale", "deviations",
]  # fmt: skip


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


def rows_of_test(
    claim: Claim, index: int, test: ClaimTest, evidence: GroupEvidence, book: ClaimBook
) -> list[dict]:
    """The rows of one test in one group (none when a side is missing)."""
    g = evidence.group
    if test.per_rank:
        sides = evidence.rank_sides(test.a)
    elif test.b is None:
        name, rows = evidence.side(test.a)
        sides = [(name, rows, None, None)] if len(rows) else []
    else:
        (a_name, a), (b_name, b) = evidence.side(test.a), evidence.side(test.b)
        sides = [(a_name, a, b_name, b)] if len(a) and len(b) else []
    out = []
    for a_name, a, b_name, b in sides:
        frames = [a] if b is None else [a, b]
        seeds = _common_seeds(*frames)
        if test.statistic == "unseen_gap":
            seeds = evidence.unseen_seeds(a, seeds)
        if not seeds:
            continue
        if test.statistic == "time_ratio":
            interval = time_ratio(a, b, seeds)
        elif test.statistic == "unseen_gap":
            interval = evidence.unseen_gap(a, seeds)
        else:
            interval = getattr(evidence, test.statistic)(a, b, seeds)
        if not math.isfinite(interval.effect):
            continue
        both = pd.concat(frames)
        out.append(
            {
                "claim": claim.id,
                "test": f"{claim.id}.{index + 1}",
                **g.key,
                "comparison": a_name if b is None else f"{a_name} vs {b_name}",
                "statistic": test.statistic,
                "unit": _unit(test.statistic, g),
                "paper": _paper_value(test, book),
                "effect": interval.effect,
                "low": interval.low,
                "high": interval.high,
                "relation": test.relation,
                "threshold": test.threshold,
                "verdict": verdict(interval, test.relation, test.threshold),
                "noise": interval.noise,
                "n_seeds": interval.n_seeds,
                "scale": scale_of(evidence, both[both["seed"].isin(seeds)], seeds),
                "deviations": deviations([(a_name, a)] + ([] if b is None else [(b_name, b)])),
            }
        )
    return out


def claims_table(
    results: pd.DataFrame, book: ClaimBook | None = None, replicates: int = BOOTSTRAP_REPLICATES
) -> pd.DataFrame:
    """One row per (claim test, group, comparison): effect, interval, verdict, scale."""
    book = book or load_claims()
    rows = []
    for group in report.experiment_groups(results):
        if report.quantized(group.rows).empty:
            continue
        evidence = None
        for claim in book.claims:
            if not claim.applies_to(group):
                continue
            evidence = evidence or GroupEvidence(group, replicates)
            for index, test in enumerate(claim.tests):
                rows += rows_of_test(claim, index, test, evidence, book)
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


SUMMARY_COLUMNS = [
    "claim",
    "statement",
    "verdict",
    "tests",
    "holds",
    "contradicted",
    "inconclusive",
]


def claims_summary(table: pd.DataFrame, book: ClaimBook | None = None) -> pd.DataFrame:
    """One row per claim of the book: its overall verdict over every test row."""
    book = book or load_claims()
    rows = []
    for claim in book.claims:
        verdicts = table.loc[table["claim"] == claim.id, "verdict"].tolist()
        rows.append(
            {
                "claim": claim.id,
                "statement": claim.claim,
                "verdict": overall_verdict(verdicts),
                "tests": len(verdicts),
                "holds": verdicts.count(HOLDS),
                "contradicted": verdicts.count(CONTRADICTED),
                "inconclusive": verdicts.count(INCONCLUSIVE),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


CLAIMS_NOTE = """\
Each test compares two sides in one (model, task, quantizer) group. `effect` is the mean over
training seeds of the per-seed effect; `low`/`high` its 95% interval, counting the sources
named in `noise` (seed-to-seed spread, and test-sample noise by a paired bootstrap of the test
examples; see docs/claims.md). Verdict: *holds* if the interval lies wholly on the claimed side
of `threshold`, *contradicted* if wholly on the other side, else *inconclusive at this scale*
(also whenever the interval does not count seed variance: one seed decides nothing).
A verdict speaks for this scale only (`scale`: models, seeds, configurations, test size and
steps far below the paper's); `deviations` names departures from the paper's protocol.
"""


def claims_markdown(table: pd.DataFrame, summary: pd.DataFrame) -> str:
    def number(value, unit):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "n/a"
        return f"{value:.3f}" if unit in ("HV", "ratio") else f"{value:+.2f}"

    lines = ["# The paper's claims at this scale", "", CLAIMS_NOTE]
    lines += ["| claim | statement | verdict | tests (holds / contradicted / inconclusive) |"]
    lines += ["|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        counts = f"{r.tests} ({r.holds} / {r.contradicted} / {r.inconclusive})"
        lines.append(f"| {r.claim} | {r.statement} | **{r.verdict}** | {counts} |")
    lines += ["", "## Tests", ""]
    lines += [
        "| test | group | comparison | paper | ours [95% interval] | relation | verdict | noise | deviations |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        ours = (
            f"{number(r.effect, r.unit)} [{number(r.low, r.unit)}, {number(r.high, r.unit)}] "
            f"{r.unit}"
        )
        relation = f"{r.relation} {r.threshold:g}"
        lines.append(
            f"| {r.test} | {r.model} / {r.task} / {r.quantizer} | {r.comparison} | {r.paper} | "
            f"{ours} | {relation} | {r.verdict} | {r.noise} | {r.deviations} |"
        )
    lines += ["", "Scale of each test:", ""]
    lines += [f"- {r.test} {r.comparison}: {r.scale}" for r in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- paper table

PAPER_COLUMNS = [
    *report.GROUP_KEYS, "relation", "paper_QNLI", "paper_MNLI", "paper_SST-2", "paper_QQP",
    "ours", "low", "high", "noise", "verdict", "scale",
]  # fmt: skip


def paper_table(results: pd.DataFrame, book: ClaimBook | None = None, table=None) -> pd.DataFrame:
    """The paper's main table as RELATIONS (HV differences, gaps, time ratios between methods)
    beside ours with their intervals: absolute HVs do not transfer across models and tasks,
    relations can. One row per group and relation that both the paper and we measured."""
    book = book or load_claims()
    table = claims_table(results, book) if table is None else table
    rows = []
    for claim in book.claims:
        for index, test in enumerate(claim.tests):
            cells = paper_cells(test, book)
            if not cells:
                continue
            mine = table[table["test"] == f"{claim.id}.{index + 1}"]
            for r in mine.itertuples(index=False):
                rows.append(
                    {
                        "model": r.model, "task": r.task, "quantizer": r.quantizer,
                        "relation": f"{test.statistic}({test.a}, {test.b})",
                        **{f"paper_{t}": cells.get(t, "") for t in ("QNLI", "MNLI", "SST-2", "QQP")},
                        "ours": r.effect, "low": r.low, "high": r.high, "noise": r.noise,
                        "verdict": r.verdict, "scale": f"paper: {book.paper_scale}; ours: {r.scale}",
                    }
                )  # fmt: skip
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)
