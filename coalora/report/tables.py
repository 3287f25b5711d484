"""The tables and their Markdown rendering.

Groups, ``hv``, ``acc_gap`` and the other shared columns are defined in
``coalora.report.groups``.

- ``summary_table`` (table1), per group and method: model, task, quantizer, method, metric,
  n_configs, hv, acc_gap, mean_metric, train_seconds, train_steps, solutions (configurations
  served: one per run for per-configuration methods, 1 for a shared adapter, ``any`` for
  CoA-LoRA, ``n/a`` for ``none``).
- ``rank_table``: the LoRA-rank ablation. For each group and trained method evaluated at two
  or more ranks, one row per (method label, r): hv, acc_gap, mean_metric, train_seconds,
  n_configs (hv as in table1).
- ``search_table``: the search ablation. For groups where CoA-LoRA runs differ in
  ``search_mode`` (full / frozen / random), one row per (label, mode): hv, acc_gap,
  mean_metric, mean_metric_unseen (mean over the unseen configurations), train_seconds.
- ``quantizer_table``: NF vs INT for (model, task) pairs evaluated under both, one row per
  method: hv_nf, hv_int, acc_gap_nf, acc_gap_int, mean_metric_nf, mean_metric_int. For
  lower-is-better metrics both HVs use the worst value over both quantizers (so they compare
  with each other, and may differ from table1's).
- ``seen_unseen_table``: per group and method that has unseen configurations (not the
  per-configuration ones): n_seen, n_unseen, mean_seen, mean_unseen, diff = unseen - seen (in
  ``unit``: ``pp`` for [0, 1] metrics, else the metric's name). The full-precision row is left
  out.
- ``causal_lm_table``: groups with a lower-is-better primary metric (perplexity), one row per
  evaluation: model, task, quantizer, method, config_name, avg_bits, seen and every metric
  (perplexity, lm-eval accuracies), sorted by method then bits.

``TABLES`` names the tables after table1 with why each can be empty; ``to_markdown`` renders
any of them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..methods import Serves
from .groups import (
    GROUP_KEYS,
    REFERENCE_METHOD,
    Group,
    experiment_groups,
    matched_difference,
    one_factor,
    prepare,
    quantized,
    search_rows,
)


def _solutions(serves: str | None, rows: pd.DataFrame) -> str:
    """How many trained models the method needs (per seed): "any" configuration from one."""
    if pd.isna(serves):  # a reference row: nothing trained
        return "n/a"
    if serves == Serves.ANY_CONFIGURATION:
        return "any"
    # One run per configuration and seed: count the runs of one seed (1 for a shared
    # adapter, a fixed configuration or full precision).
    return str(rows.groupby("seed")["hashes.checkpoint"].nunique(dropna=False).max())


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """A table with exactly ``columns`` (also when there are no rows)."""
    return pd.DataFrame(rows, columns=columns)


TABLE1_COLUMNS = [
    *GROUP_KEYS,
    "method",
    "metric",
    "n_seeds",
    "n_configs",
    "hv",
    "hv_sd",
    "acc_gap",
    "mean_metric",
    "train_seconds",
    "train_steps",
    "solutions",
]


def summary_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """The main comparison table from a results frame (``coalora.evaluate.results.read_results``).

    ``results`` needs columns: model, task, quantizer, method, config_name, avg_bits,
    primary_metric, higher_is_better, metrics.<name>, train_seconds, train_steps, checkpoint
    hash (``protocol`` and ``seen`` are optional).
    """
    rows = []
    for group in experiment_groups(results, reference):
        for method, m in group.methods():
            stats = group.stats(m)
            solutions = _solutions(m["serves"].iloc[0], m)
            rows.append(
                {
                    **group.key,
                    "method": method,
                    "metric": group.metric,
                    **stats,
                    "solutions": solutions,
                }
            )
    return _frame(rows, TABLE1_COLUMNS)


RANK_COLUMNS = [
    *GROUP_KEYS,
    "trained_method",
    "method",
    "r",
    "hv",
    "acc_gap",
    "mean_metric",
    "train_seconds",
    "n_configs",
]


def rank_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """LoRA-rank ablation: trained methods evaluated at >= 2 ranks, other settings equal, one
    row per (label, r)."""
    rows = []
    for group in experiment_groups(results, reference):
        ranked = group.rows.dropna(subset=["r"])
        for trained, t in ranked.groupby("trained_method", sort=True):
            t = one_factor(t, trained, "r")
            if t["r"].nunique() < 2:
                continue
            for (r, method), m in t.groupby(["r", "method"], sort=True):  # by rank
                stats = group.stats(m)
                rows.append(
                    {**group.key, "trained_method": trained, "method": method, "r": int(r), **stats}
                )
    return _frame(rows, RANK_COLUMNS)


SEARCH_COLUMNS = [
    *GROUP_KEYS,
    "method",
    "search_mode",
    "hv",
    "acc_gap",
    "mean_metric",
    "mean_metric_unseen",
    "train_seconds",
    "n_configs",
]


def search_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """Search ablation: CoA-LoRA labels of a group with differing ``search_mode``."""
    rows = []
    for group in experiment_groups(results, reference):
        for (method, mode), m in search_rows(group).groupby(["method", "search_mode"], sort=True):
            unseen = m.loc[m["unseen"], "value"]
            stats = group.stats(m)
            rows.append(
                {
                    **group.key,
                    "method": method,
                    "search_mode": mode,
                    **stats,
                    "mean_metric_unseen": float(unseen.mean()) if len(unseen) else float("nan"),
                }
            )
    return _frame(rows, SEARCH_COLUMNS)


QUANTIZER_COLUMNS = [
    "model",
    "task",
    "method",
    "metric",
    "hv_nf",
    "hv_int",
    "acc_gap_nf",
    "acc_gap_int",
    "mean_metric_nf",
    "mean_metric_int",
]


def quantizer_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """NF vs INT, for (model, task) pairs evaluated under both quantizers."""
    by_pair: dict[tuple, dict[str, Group]] = {}
    for group in experiment_groups(results, reference):
        by_pair.setdefault((group.model, group.task), {})[group.quantizer] = group
    rows = []
    for (model, task), groups in sorted(by_pair.items()):
        if not {"nf", "int"} <= set(groups):
            continue
        worst = max(groups["nf"].worst, groups["int"].worst)
        labels = sorted(set(groups["nf"].rows["method"]) | set(groups["int"].rows["method"]))
        for method in labels:
            row = {"model": model, "task": task, "method": method, "metric": groups["nf"].metric}
            for q in ("nf", "int"):
                m = groups[q].rows[groups[q].rows["method"] == method]
                stats = groups[q].stats(m, worst) if len(m) else {}
                for name in ("hv", "acc_gap", "mean_metric"):
                    row[f"{name}_{q}"] = stats.get(name, float("nan"))
            rows.append(row)
    return _frame(rows, QUANTIZER_COLUMNS)


SEEN_UNSEEN_COLUMNS = [
    *GROUP_KEYS,
    "method",
    "metric",
    "n_seen",
    "n_unseen",
    "mean_seen",
    "mean_unseen",
    "diff",
    "n_matched",
    "matched_diff",
    "unit",
]


def _matched_diff(seen: pd.DataFrame, unseen: pd.DataFrame, to_scale) -> tuple[int, float]:
    """``matched_difference`` of two frames' values on ``to_scale``'s scale."""
    return matched_difference(
        seen["avg_bits"], to_scale(seen["value"]), unseen["avg_bits"], to_scale(unseen["value"])
    )


def seen_unseen_table(results: pd.DataFrame) -> pd.DataFrame:
    """Seen vs unseen configurations, per method that has unseen ones.

    Accuracy-like metrics compare in points (100 x difference); perplexity in log space
    (geometric means; differences are 100 x difference of ln perplexity), as table1's gap.
    ``diff`` is unseen minus seen over all configurations, so it also carries the bit-width
    difference between the two sets; ``matched_diff`` compares at equal average bits."""
    rows = []
    for group in experiment_groups(results):
        # The scale differences are taken on, and back to the metric (so perplexity means
        # are geometric).
        if group.higher_is_better:
            to_scale, from_scale, unit = (lambda v: 100.0 * v), (lambda x: x / 100.0), "pp"
        else:
            to_scale, from_scale, unit = (
                (lambda v: 100.0 * np.log(v)),
                (lambda x: math.exp(x / 100.0)),
                "100*dln",
            )
        for method, m in quantized(group.rows).groupby("method", sort=True):
            if not m["unseen"].any():
                continue
            seen, unseen = m[~m["unseen"]], m[m["unseen"]]
            scaled_seen = float(to_scale(seen["value"]).mean())  # NaN without seen rows
            scaled_unseen = float(to_scale(unseen["value"]).mean())
            n_matched, matched = _matched_diff(seen, unseen, to_scale)
            mean_seen, mean_unseen = from_scale(scaled_seen), from_scale(scaled_unseen)
            rows.append(
                {
                    **group.key,
                    "method": method,
                    "metric": group.metric,
                    "n_seen": len(seen),
                    "n_unseen": len(unseen),
                    "mean_seen": mean_seen,
                    "mean_unseen": mean_unseen,
                    "diff": scaled_unseen - scaled_seen,
                    "n_matched": n_matched,
                    "matched_diff": matched,
                    "unit": unit,
                }
            )
    return _frame(rows, SEEN_UNSEEN_COLUMNS)


CAUSAL_COLUMNS = [*GROUP_KEYS, "method", "seed", "config_name", "avg_bits", "seen"]


def causal_lm_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every evaluation of a lower-is-better (perplexity) group with all its metrics."""
    df = prepare(results)
    df = df[~df["higher_is_better"].astype(bool)]
    metrics = [c for c in results.columns if c.startswith("metrics.") and df[c].notna().any()]
    table = df.sort_values([*GROUP_KEYS, "method", "seed", "avg_bits", "config_name"])
    table = table[CAUSAL_COLUMNS + metrics].rename(columns=lambda c: c.removeprefix("metrics."))
    return table.reset_index(drop=True)


# name -> (table(results, reference), why it can be empty): `coalora report tables` outputs.
TABLES = {
    "rank": (rank_table, "no trained method was evaluated at two or more LoRA ranks"),
    "search": (search_table, "no CoA-LoRA runs with different search modes"),
    "quantizer": (quantizer_table, "no (model, task) was evaluated under both nf and int"),
    "seen_unseen": (
        lambda results, reference: seen_unseen_table(results),
        "no method was evaluated on unseen configurations",
    ),
    "causal_lm": (
        lambda results, reference: causal_lm_table(results),
        "no lower-is-better (perplexity) task",
    ),
}


def to_markdown(table: pd.DataFrame, floatfmt: str = ".4f", empty: str = "") -> str:
    """A GitHub Markdown rendering (no extra dependency); ``empty`` explains a table with no
    rows, printed under the header."""

    def cell(value) -> str:
        if value is None or value is pd.NA:
            return ""
        if isinstance(value, float):
            return "" if np.isnan(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    note = [f"\n(no data: {empty})"] if table.empty and empty else []
    return "\n".join([header, rule, *body, *note]) + "\n"
