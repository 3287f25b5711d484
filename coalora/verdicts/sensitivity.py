"""Can a group tell configurations apart? The diagnostic behind the claims' ``sensitivity``.

Configuration-awareness can only show where the configuration matters. Per (model, task,
quantizer) group: the reference method (QLoRA, ``report.REFERENCE_METHOD``) at its highest
against its lowest evaluated average bits, per seed on the gap scale (points, or
``-100 ln ppl``), with the claims' interval (seeds + paired bootstrap of the test examples,
``coalora.verdicts.stats``). The group is *flat* when that interval includes 0 or lies below the
minimum effect ``claims.yaml`` declares for the metric; then no test of configuration-awareness
can say anything there. A full-precision LoRA run (its own method label, quantizer ``none``),
where there is one, gives the ceiling: its mean metric with interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import report
from .stats import Interval, example_count, interval_of, resampled_values

FLAT, SENSITIVE, UNKNOWN = "flat", "sensitive", "unknown"
FLAT_TEXT = "flat: cannot test configuration-awareness here"


@dataclass(frozen=True)
class Sensitivity:
    """One group's diagnostic (``diagnose``)."""

    key: dict  # model, task, quantizer
    reference: str
    unit: str
    min_effect: float
    min_effect_reason: str
    status: str  # FLAT, SENSITIVE or UNKNOWN
    why: str = ""  # for UNKNOWN: what is missing
    best_bits: float = math.nan
    worst_bits: float = math.nan
    best_metric: float = math.nan  # mean over seeds, on the metric's own scale
    worst_metric: float = math.nan
    spread: Interval | None = None  # best - worst, on the gap scale
    ceiling_label: str = ""
    ceiling: Interval | None = None  # the full-precision run's mean metric

    @property
    def flat(self) -> bool:
        return self.status == FLAT

    def spread_text(self) -> str:
        if self.spread is None:
            return f"unknown: {self.why}"
        s = self.spread
        return (
            f"{self.reference} {self.best_bits:.2f} vs {self.worst_bits:.2f} bits "
            f"{s.effect:+.2f} [{s.low:+.2f}, {s.high:+.2f}] {self.unit} ({s.noise})"
        )

    def ceiling_text(self) -> str:
        if self.ceiling is None:
            return "no full-precision reference run"
        c = self.ceiling
        interval = f" [{c.low:.4g}, {c.high:.4g}]" if c.decided else ""
        return f"{self.ceiling_label} (full precision): {c.effect:.4g}{interval} ({c.noise})"

    def text(self) -> str:
        """The claims table's ``sensitivity`` for a test gated by this diagnostic."""
        if self.status == FLAT:
            return FLAT_TEXT
        return f"{self.status}: {self.spread_text()}"


def _budget_ends(reference: pd.DataFrame) -> tuple[str, str] | None:
    """(highest, lowest) average-bits configuration of the reference method that every one
    of its seeds evaluated; None without two distinct budgets."""
    seeds = reference["seed"].nunique()
    counts = reference.groupby("config_name")["seed"].nunique()
    shared = reference[reference["config_name"].isin(counts[counts == seeds].index)]
    bits = shared.groupby("config_name")["avg_bits"].mean().sort_values()
    if len(bits) < 2 or bits.iloc[0] == bits.iloc[-1]:
        return None
    return bits.index[-1], bits.index[0]


def ceiling_interval(group: report.Group, label: str, replicates: int) -> Interval | None:
    """Mean metric of the full-precision run ``label`` over its seeds (one run per seed),
    with the interval over seeds and test samples (the same paired draws as the group's:
    ``resampled_values`` draws by the number of examples)."""
    rows = group.rows[(group.rows["quantizer"] == "none") & (group.rows["method"] == label)]
    if rows.empty:
        return None
    rows = rows.drop_duplicates("seed").reset_index(drop=True)
    records = rows.assign(per_example=rows.get("per_example")).to_dict("records")
    values = resampled_values(records, group.metric, replicates)
    row_of = {int(s): i for i, s in enumerate(rows["seed"])}
    n_test = example_count(records[0].get("per_example")) if values.shape[1] > 1 else None
    return interval_of(lambda s, c: values[row_of[s], c], sorted(row_of), values.shape[1], n_test)


def diagnose(evidence, unit: str, min_effect, ceiling_label: str, replicates: int):
    """The diagnostic of ``evidence.group`` (a ``claims.GroupEvidence``: its rows and their
    metric under the paired test resamplings); ``min_effect`` has a ``value`` and a
    ``reason`` (a ``claimbook.Margin``)."""
    group = evidence.group
    base = {
        "key": group.key, "reference": group.reference, "unit": unit, "min_effect": min_effect.value,
        "min_effect_reason": min_effect.reason,
        "ceiling_label": ceiling_label,
        "ceiling": ceiling_interval(group, ceiling_label, replicates),
    }  # fmt: skip
    reference = evidence.label_rows(group.reference)
    ends = _budget_ends(reference) if len(reference) else None
    if ends is None:
        why = f"no {group.reference} runs at two budgets"
        return Sensitivity(status=UNKNOWN, why=why, **base)
    best, worst = ends
    by_config = {c: reference[reference["config_name"] == c] for c in ends}
    seeds = sorted(set(by_config[best]["seed"].astype(int)))
    row_of = {
        c: dict(zip(r["seed"].astype(int), r["_row"], strict=True)) for c, r in by_config.items()
    }

    def effect(seed, column):
        y = evidence.values[[row_of[best][seed], row_of[worst][seed]], column]
        high, low = report.gap_scale(y, group.higher_is_better)
        return high - low

    spread = interval_of(effect, seeds, evidence.columns, evidence.n_test)
    if not spread.decided:
        status = UNKNOWN
    else:
        status = FLAT if spread.low <= 0 or spread.high < min_effect.value else SENSITIVE
    return Sensitivity(
        status=status,
        why="a single measurement (no interval)" if status == UNKNOWN else "",
        best_bits=float(by_config[best]["avg_bits"].mean()),
        worst_bits=float(by_config[worst]["avg_bits"].mean()),
        best_metric=float(by_config[best]["value"].mean()),
        worst_metric=float(by_config[worst]["value"].mean()),
        spread=spread,
        **base,
    )


SENSITIVITY_COLUMNS = [
    *report.GROUP_KEYS, "status", "reference", "best_bits", "worst_bits", "best_metric",
    "worst_metric", "spread", "low", "high", "unit", "min_effect", "noise", "n_seeds",
    "se_seed", "se_test", "ceiling", "ceiling_low", "ceiling_high",
]  # fmt: skip


def sensitivity_frame(diagnostics: list[Sensitivity]) -> pd.DataFrame:
    """One row per group: the diagnostic's numbers (NaN where there are none), with its
    noise components (the seed planner's, ``coalora.verdicts.seedplan``)."""
    rows = []
    for d in diagnostics:
        s, c = d.spread, d.ceiling
        rows.append(
            {
                **d.key, "status": d.status, "reference": d.reference,
                "best_bits": d.best_bits, "worst_bits": d.worst_bits,
                "best_metric": d.best_metric, "worst_metric": d.worst_metric,
                "spread": s.effect if s else np.nan, "low": s.low if s else np.nan,
                "high": s.high if s else np.nan, "unit": d.unit, "min_effect": d.min_effect,
                "noise": s.noise if s else "", "n_seeds": s.n_seeds if s else 0,
                "se_seed": s.se_seed if s else np.nan, "se_test": s.se_test if s else np.nan,
                "ceiling": c.effect if c else np.nan,
                "ceiling_low": c.low if c else np.nan, "ceiling_high": c.high if c else np.nan,
            }
        )  # fmt: skip
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
