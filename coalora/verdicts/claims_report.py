"""The claims table as people read it: ``claims.md`` (the verdict per claim, the tests, each
group's sensitivity diagnostic, what deciding would take, the margins) and the paper table
(the paper's relations beside ours). The numbers all come from ``coalora.verdicts.claims``."""

from __future__ import annotations

import math

import pandas as pd

from .. import report
from .claims import ClaimBook, claims_table, load_claims
from .paper import paper_cells
from .sensitivity import FLAT_TEXT, Sensitivity

CLAIMS_NOTE = """\
Each test compares two sides in one (model, task, quantizer) group. `effect` is the mean over
training seeds of the per-seed effect; `low`/`high` its 95% interval, counting the sources
named in `noise` (seed-to-seed spread, and test-sample noise by a paired bootstrap of the test
examples; see docs/claims.md). Verdict: *holds* if the interval lies wholly on the claimed side
of `threshold`, *contradicted* if wholly on the other side, else *inconclusive at this scale*
(also whenever the interval does not count seed variance: one seed decides nothing).
Where the paper says "comparable or superior", a test is read both ways: *superior* (above
the threshold) and *comparable* (above threshold - margin, the margin from the paper's own
numbers, below); the claim follows the comparable reading, and `smallest margin` is the
margin at which comparable would hold. `paper vs ours`: the paper's effect (its range over
GLUE tasks) inside, above or below our interval. A test of configuration-awareness in a
group whose reference method cannot tell its budgets apart (section "Can each group tell
configurations apart?") says so instead of a verdict. A verdict speaks for this scale only
(`scale`: models, seeds, configurations, test size and steps far below the paper's);
`deviations` names departures from the paper's protocol; "To decide" says what seeds and
test examples would decide each open test, and at what price.
"""


def _number(value, unit):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if unit in ("HV", "ratio") else f"{value:+.2f}"


def _group(r) -> str:
    return f"{r.model} / {r.task} / {r.quantizer}"


def _verdict_cell(r) -> str:
    if r.sensitivity.startswith(FLAT_TEXT):
        return f"*{r.sensitivity}*"
    return f"**{r.verdict}**" if r.decides else r.verdict


def _sensitivity_section(diagnostics: list[Sensitivity], book: ClaimBook) -> list[str]:
    lines = ["", "## Can each group tell configurations apart?", ""]
    lines += [
        "The reference method at its highest against its lowest evaluated budget (per seed, "
        "with the claims' interval), and the full-precision LoRA run as the ceiling. Flat "
        "(the interval includes 0 or lies below the minimum effect): the tests of "
        "configuration-awareness cannot say anything in that group.",
    ]
    for d in diagnostics:
        lines += ["", f"### {d.key['model']} / {d.key['task']} / {d.key['quantizer']}", ""]
        if d.spread is not None:
            lines.append(
                f"- {d.reference}: {d.best_metric:.4g} at {d.best_bits:.2f} bits, "
                f"{d.worst_metric:.4g} at {d.worst_bits:.2f} bits"
            )
        lines.append(f"- best - worst budget: {d.spread_text()}")
        lines.append(f"- minimum effect: {d.min_effect:g} {d.unit} ({d.min_effect_reason})")
        lines.append(f"- ceiling: {d.ceiling_text()}")
        verdict = {
            "flat": f"**{FLAT_TEXT.split(': ', 1)[1]}** (flat)",
            "sensitive": "the budgets differ: configuration-awareness can show here",
            "unknown": "unknown: the diagnostic has no interval",
        }[d.status]
        lines.append(f"- {verdict}")
    return lines


def _trained_section(table: pd.DataFrame, curve: pd.DataFrame | None) -> list[str]:
    """Per group: each test's effect at every snapshot and at the end, whether it settled,
    and each side's exposure."""
    lines = ["", "## Trained far enough?", ""]
    lines += [
        "Each test's effect [95% interval] from the records as they stood at each snapshot of "
        "every run and at the end (the same test examples; lm-eval tasks left out of the "
        "snapshots). `trained`: *settled* when the change from the half-way snapshot to the "
        "end lies inside the statistic's tolerance (docs/claims.md), *still moving* otherwise: "
        "such a test gives no verdict, and `settling` says what the interval alone would have "
        "said. `exposure`: the optimizer steps each side trained on the evaluated "
        "configurations (mean per configuration and seed), and the same weighted by learning "
        "rate and loss share.",
    ]
    deciding = table[table["decides"].astype(bool)]
    for key, rows in deciding.groupby(list(report.GROUP_KEYS), sort=True):
        lines += ["", f"### {' / '.join(key)}", ""]
        fractions = [] if curve is None else sorted(set(curve["fraction"]))
        mine = pd.DataFrame() if curve is None else curve
        if len(mine):
            mine = mine[
                (
                    mine[list(report.GROUP_KEYS)]
                    == pd.Series(dict(zip(report.GROUP_KEYS, key, strict=True)))
                ).all(axis=1)
            ]
        heads = []
        for f in fractions:
            at = mine[mine["fraction"] == f]["steps"]
            step = at.iloc[0] if len(at) else "?"
            heads.append(("end" if f == 1.0 else f"at {f:g}") + f" (step {step})")
        lines.append(
            "| test | comparison | "
            + " | ".join(heads)
            + (" | " if heads else "")
            + "trained | settling | exposure |"
        )
        lines.append("|---" * (5 + len(heads)) + "|")
        for r in rows.itertuples(index=False):
            cells = []
            for f in fractions:
                at = mine[(mine["fraction"] == f) & (mine["test"] == r.test)
                          & (mine["comparison"] == r.comparison)]  # fmt: skip
                if at.empty:
                    cells.append("n/a")
                    continue
                c = at.iloc[0]
                cells.append(
                    f"{_number(c['effect'], r.unit)} [{_number(c['low'], r.unit)}, "
                    f"{_number(c['high'], r.unit)}]"
                )
            lines.append(
                f"| {r.test} | {r.comparison} | "
                + " | ".join(cells)
                + (" | " if cells else "")
                + f"{r.trained} | {r.settling} | {r.exposure} |"
            )
    return lines


def claims_markdown(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    diagnostics: list[Sensitivity] = (),
    book: ClaimBook | None = None,
    curve: pd.DataFrame | None = None,
) -> str:
    book = book or load_claims()
    lines = ["# The paper's claims at this scale", "", CLAIMS_NOTE]
    lines += [
        "| claim | statement | verdict | reading | tests (holds / contradicted / inconclusive) |"
    ]
    lines += ["|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        counts = f"{r.tests} ({r.holds} / {r.contradicted} / {r.inconclusive})"
        lines.append(f"| {r.claim} | {r.statement} | **{r.verdict}** | {r.reading} | {counts} |")
    lines += ["", "## Tests", ""]
    lines += [
        "| test | group | comparison | reading | paper | paper vs ours | ours [95% interval] "
        "| relation | verdict | smallest margin | noise | deviations |"
    ]
    lines += ["|---" * 12 + "|"]
    for r in table.itertuples(index=False):
        ours = (
            f"{_number(r.effect, r.unit)} [{_number(r.low, r.unit)}, {_number(r.high, r.unit)}] "
            f"{r.unit}"
        )
        relation = f"{r.relation} {r.threshold:g}"
        smallest = "" if r.reading != "comparable" else _number(r.smallest_margin, r.unit)
        lines.append(
            f"| {r.test} | {_group(r)} | {r.comparison} | {r.reading} | {r.paper} | "
            f"{r.paper_position} | {ours} | {relation} | {_verdict_cell(r)} | {smallest} | "
            f"{r.noise} | {r.deviations} |"
        )
    lines += _sensitivity_section(list(diagnostics), book)
    lines += _trained_section(table, curve)
    open_rows = table[table["to_decide"] != "decided"]
    lines += ["", "## To decide", ""]
    lines += [
        f"Seeds and test examples at which each open test would be decided with "
        f"{book.planning['power']:.0%} power (two-sided 95% interval, as built here), the "
        f"cheapest in core-seconds on the machine that ran these records, at the paper's effect "
        f"(its mean over tasks) and at ours (docs/claims.md, coalora/verdicts/power.py).",
        "",
    ]
    lines += [
        f"- {r.test} {_group(r)}, {r.comparison} ({r.reading}): {r.to_decide}"
        for r in open_rows.itertuples(index=False)
    ] or ["Every test is decided."]
    lines += ["", "## Margins", ""]
    lines += [f"- `{name}`: {m.value:g} ({m.reason})" for name, m in book.margins.items()]
    lines += ["", "Scale of each test:", ""]
    scales = table.drop_duplicates(["test", "comparison", "scale"])
    lines += [f"- {r.test} {r.comparison}: {r.scale}" for r in scales.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- paper table

PAPER_COLUMNS = [
    *report.GROUP_KEYS, "relation", "paper_QNLI", "paper_MNLI", "paper_SST-2", "paper_QQP",
    "ours", "low", "high", "noise", "paper_position", "verdict", "reading", "scale",
]  # fmt: skip


def paper_table(
    results: pd.DataFrame, book: ClaimBook | None = None, table=None, curves=None
) -> pd.DataFrame:
    """The paper's main table as RELATIONS (HV differences, gaps, time ratios between methods)
    beside ours with their intervals: absolute HVs do not transfer across models and tasks,
    relations can. One row per group and relation that both the paper and we measured, with
    the verdict of the test's deciding reading (``curves``: the snapshot records the settled
    gate reads, as in the claims table)."""
    book = book or load_claims()
    table = claims_table(results, book, curves=curves) if table is None else table
    table = table[table["decides"].astype(bool)]
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
                        "paper_position": r.paper_position, "verdict": r.verdict,
                        "reading": r.reading,
                        "scale": f"paper: {book.paper_scale_text()}; ours: {r.scale}",
                    }
                )  # fmt: skip
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)
