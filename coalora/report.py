"""Tables and figures from evaluation results (one JSON per evaluation; nothing else is read).

Every table works on *experiment groups*: the results of one (model, task, quantizer).
A full-precision row (quantizer ``none``, config ``full-precision``) belongs to its
(model, task) group under every quantizer present, as method ``full-precision`` (not mixed
into the quantized base ``none``). Methods are the records' ``method``
labels (``coalora``, or an ablation variant such as ``coalora-r32``); ``trained_method``,
``r`` and ``search_mode`` come from ``protocol.trained_method`` / ``protocol.train_settings``
(absent for the unadapted base ``none``; older records fall back to the label).

Shared definitions (every table uses the same helper, so numbers agree across tables):

- ``hv``: hypervolume of the method's (avg_bits, metric) points. Both objectives are
  minimised after a transform: bits as they are, and ``1 - metric`` for metrics in [0, 1]
  where higher is better (accuracy, F1), or ``ln(metric)`` where lower is better
  (perplexity: a 2-bit model can reach perplexities of 1e6 and more, which on a linear scale
  would flatten every other difference). The area is normalised by the box between the
  ideal point ``(MIN_BITS, 0)`` and the reference point ``(MAX_BITS, 1)`` for [0, 1]
  metrics, or ``(MAX_BITS, ln(1.1 * worst value of the group over all methods))`` for
  lower-is-better ones (so perplexity HVs compare methods within one group, not across
  groups). MIN_BITS ~ 2.032 and MAX_BITS = 8.625 are the extremes of the configuration space;
  the full-precision row (32 bits) lies outside the box and adds nothing.
- ``acc_gap``: mean difference to the reference method (QLoRA) over the configurations both
  evaluated (matched by configuration name), in percentage points for [0, 1] metrics
  (method - reference), and for lower-is-better ones as ``100 * mean(ln reference -
  ln method)`` (about the mean relative improvement, in percent, for small differences), so
  a positive gap always means better than the reference.
- ``mean_metric``: mean primary metric over the method's evaluations; ``n_configs``: their count.
- ``train_seconds`` / ``train_steps``: total fine-tuning wall seconds and optimizer steps over
  the method's distinct checkpoints (one per configuration for per-configuration methods).
- *unseen*: a configuration outside the method's final training set: ``seen`` is false, or
  ``seen`` is null (the base ``none``) and the configuration name starts with ``u`` (the
  workflow's unseen budgets, which no method trains on). Every other quantized row is *seen*.

Tables:

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

The paper's numbers, the claims and the ``paper`` table of relations live in
``coalora.claims`` (which reads these tables' definitions, never the other way round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .quant import MAX_BITS, MIN_BITS
from .search.pareto import hypervolume

REFERENCE_METHOD = "qlora"
ANY_CONFIGURATION = {"coalora"}
SHARED_ADAPTER = {"shared-lora"}
# Rows that are references, not trained methods (no adapter or no quantization).
FULL_PRECISION = "full-precision"
REFERENCE_ROWS = {"none", FULL_PRECISION}
GROUP_KEYS = ["model", "task", "quantizer"]

# --- shared grouping and statistics --------------------------------------------------------


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``value`` (the primary metric), ``trained_method``, ``r``, ``search_mode``
    and ``unseen`` columns."""
    df = results.copy()
    df["value"] = [float(row[f"metrics.{row['primary_metric']}"]) for _, row in df.iterrows()]
    protocols = df["protocol"] if "protocol" in df else pd.Series([{}] * len(df), index=df.index)
    protocols = protocols.map(lambda p: p if isinstance(p, dict) else {})
    settings = protocols.map(lambda p: p.get("train_settings") or {})
    df["trained_method"] = [
        p.get("trained_method", method) for p, method in zip(protocols, df["method"], strict=True)
    ]
    df["r"] = settings.map(lambda s: s.get("r")).astype("Float64")
    df["search_mode"] = settings.map(lambda s: s.get("search_mode"))
    df.loc[df["quantizer"].eq("none") & df["method"].eq("none"), "method"] = FULL_PRECISION
    seen = df["seen"] if "seen" in df else pd.Series([None] * len(df), index=df.index)
    df["unseen"] = seen.eq(False) | (seen.isna() & df["config_name"].str.startswith("u"))
    return df


@dataclass
class Group:
    """The results of one (model, task, quantizer), full-precision rows included."""

    model: str
    task: str
    quantizer: str
    rows: pd.DataFrame
    reference: str = REFERENCE_METHOD

    @property
    def key(self) -> dict:
        return {"model": self.model, "task": self.task, "quantizer": self.quantizer}

    @property
    def metric(self) -> str:
        return str(self.rows["primary_metric"].iloc[0])

    @property
    def higher_is_better(self) -> bool:
        return bool(self.rows["higher_is_better"].iloc[0])

    @property
    def worst(self) -> float:
        return float(self.rows["value"].max())

    def methods(self):
        """(label, rows) per method label, sorted by label."""
        return self.rows.groupby("method", sort=True)

    def stats(self, rows: pd.DataFrame, worst: float | None = None) -> dict:
        """The shared columns for some of this group's rows (one method label, any seeds):
        HV per seed, then its mean and standard deviation over seeds; times and steps summed
        over one seed's checkpoints, then averaged over seeds."""
        worst = self.worst if worst is None else worst
        hvs = [method_hypervolume(r, worst) for _, r in rows.groupby("seed", sort=True)]
        per_ckpt = rows.drop_duplicates(["seed", "hashes.checkpoint"]).groupby("seed")
        reference = self.rows[self.rows["method"] == self.reference]
        is_reference = bool(rows["method"].eq(self.reference).all())
        return {
            "n_seeds": len(hvs),
            "n_configs": int(rows["config_name"].nunique()),
            "hv": float(np.mean(hvs)),
            "hv_sd": float(np.std(hvs, ddof=1)) if len(hvs) > 1 else float("nan"),
            "acc_gap": float("nan") if is_reference else _gap(rows, reference),
            "mean_metric": float(rows["value"].mean()),
            "train_seconds": float(per_ckpt["train_seconds"].sum().mean()),
            "train_steps": int(round(per_ckpt["train_steps"].sum().mean())),
        }


def experiment_groups(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> list[Group]:
    """Split a results frame into (model, task, quantizer) groups, sorted by key; the
    full-precision rows of a (model, task) join each of its quantized groups."""
    df = _prepare(results)
    groups = []
    for (model, task), pair in df.groupby(["model", "task"], sort=True):
        full = pair[pair["quantizer"] == "none"]
        quantizers = sorted(set(pair["quantizer"]) - {"none"}) or ["none"]
        for quantizer in quantizers:
            rows = pair[pair["quantizer"] == quantizer]
            if quantizer != "none":
                rows = pd.concat([rows, full])
            twice = rows[rows.duplicated(["method", "seed", "config_name"])]
            if len(twice):
                method, seed, config = twice.iloc[0][["method", "seed", "config_name"]]
                raise ValueError(
                    f"two results for method {method!r} at seed {seed} on configuration "
                    f"{config!r} of {model} / {task} / {quantizer}: results of one (model, "
                    f"task, quantizer) form one table group, so give different runs different "
                    f"method labels"
                )
            groups.append(Group(model, task, quantizer, rows, reference))
    return groups


def method_hypervolume(points: pd.DataFrame, worst: float | None = None) -> float:
    """HV of one method's (avg_bits, metric) points; see the module docstring."""
    if points.empty:
        return float("nan")
    return hv_of(
        points["avg_bits"].to_numpy(dtype=float),
        points["value"].to_numpy(dtype=float),
        bool(points["higher_is_better"].iloc[0]),
        worst,
    )


def hv_of(bits: np.ndarray, value: np.ndarray, higher: bool, worst: float | None = None) -> float:
    """HV of (bits, metric) points as arrays (``method_hypervolume`` without the frame)."""
    # Lower-is-better metrics (perplexity >= 1) in log space; see the module docstring.
    objective = 1.0 - value if higher else np.log(np.maximum(value, 1.0))
    if higher:
        ref_y = 1.0
    else:
        ref_y = math.log(1.1 * max(float(worst if worst is not None else value.max()), 1.0))
    pts = np.column_stack([bits, objective])
    return hypervolume(pts, ref=[MAX_BITS, ref_y], ideal=[MIN_BITS, 0.0])


def gap_scale(values, higher_is_better: bool):
    """The scale gaps are differences on: points (100 x metric) for [0, 1] metrics where
    higher is better, ``-100 ln(metric)`` for perplexity; higher is better on both."""
    values = np.asarray(values, dtype=float)
    return 100.0 * values if higher_is_better else -100.0 * np.log(values)


def _gap(method_rows: pd.DataFrame, reference_rows: pd.DataFrame) -> float:
    """Mean over the configurations both evaluated of (method - reference) on ``gap_scale``,
    each side first averaged over its seeds."""
    if method_rows.empty or reference_rows.empty:
        return float("nan")
    higher = bool(method_rows["higher_is_better"].iloc[0])

    def per_config(rows):
        return rows.assign(y=gap_scale(rows["value"], higher)).groupby("config_name")["y"].mean()

    mine, ref = per_config(method_rows), per_config(reference_rows)
    shared = mine.index.intersection(ref.index)
    if shared.empty:
        return float("nan")
    return float((mine[shared] - ref[shared]).mean())


def _solutions(trained_method: str, rows: pd.DataFrame) -> str:
    if trained_method in ANY_CONFIGURATION:
        return "any"
    if trained_method in REFERENCE_ROWS:
        return "n/a"
    if trained_method in SHARED_ADAPTER:
        return "1"
    # One run per configuration and seed: count the runs of one seed.
    return str(rows.groupby("seed")["hashes.checkpoint"].nunique(dropna=False).max())


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """A table with exactly ``columns`` (also when there are no rows)."""
    return pd.DataFrame(rows, columns=columns)


# --- tables --------------------------------------------------------------------------------

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
            solutions = _solutions(m["trained_method"].iloc[0], m)
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


# The training settings the ablation tables vary, one at a time.
ABLATED_SETTINGS = ("r", "search_mode")


def _one_factor(rows: pd.DataFrame, trained: str, varied: str) -> pd.DataFrame:
    """The rows of one trained method that differ from its main label only in ``varied``:
    the other ablated settings must equal those of the label named after the method (e.g.
    ``coalora``), or, without such a label, their most common values. So a rank variant
    stays out of the search ablation and a search variant out of the rank ablation."""
    main = rows[rows["method"] == trained]
    main = main if len(main) else rows
    keep = pd.Series(True, index=rows.index)
    for setting in ABLATED_SETTINGS:
        if setting == varied or main[setting].isna().all():
            continue
        keep &= rows[setting] == main[setting].mode().iloc[0]
    return rows[keep]


def rank_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """LoRA-rank ablation: trained methods evaluated at >= 2 ranks, other settings equal, one
    row per (label, r)."""
    rows = []
    for group in experiment_groups(results, reference):
        ranked = group.rows.dropna(subset=["r"])
        for trained, t in ranked.groupby("trained_method", sort=True):
            t = _one_factor(t, trained, "r")
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


def _search_rows(group: Group) -> pd.DataFrame:
    """The group's CoA-LoRA rows at its main rank if their search modes differ, else an empty
    frame."""
    coalora = group.rows[group.rows["trained_method"].isin(ANY_CONFIGURATION)]
    coalora = coalora.dropna(subset=["search_mode"])
    coalora = pd.concat(
        [_one_factor(t, trained, "search_mode") for trained, t in coalora.groupby("trained_method")]
        or [coalora]
    )
    return coalora if coalora["search_mode"].nunique() >= 2 else coalora.iloc[0:0]


def search_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """Search ablation: CoA-LoRA labels of a group with differing ``search_mode``."""
    rows = []
    for group in experiment_groups(results, reference):
        for (method, mode), m in _search_rows(group).groupby(["method", "search_mode"], sort=True):
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


def _quantized(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["quantizer"] != "none"]


def matched_difference(seen_bits, seen_y, unseen_bits, unseen_y) -> tuple[int, float]:
    """Mean of (unseen - seen) at equal average bits: each unseen point against the seen curve
    (the mean at each bit-width, linearly interpolated) at its bits. Only unseen points inside
    the seen bit range count (their number is returned first); this keeps the bit-width effect
    out of the comparison."""
    seen_bits, unseen_bits = np.asarray(seen_bits, float), np.asarray(unseen_bits, float)
    if not len(seen_bits):
        return 0, float("nan")
    bits, which = np.unique(seen_bits, return_inverse=True)
    curve = np.bincount(which, np.asarray(seen_y, float)) / np.bincount(which)
    inside = (unseen_bits >= bits[0]) & (unseen_bits <= bits[-1])
    if not inside.any():
        return 0, float("nan")
    reference = np.interp(unseen_bits[inside], bits, curve)
    return int(inside.sum()), float(np.mean(np.asarray(unseen_y, float)[inside] - reference))


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
        for method, m in _quantized(group.rows).groupby("method", sort=True):
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
    df = _prepare(results)
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


# --- figures ------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(results: pd.DataFrame, title: str = ""):
    """Primary metric vs average bits, one panel per group and one line per method: the mean
    over seeds (geometric for perplexity) with bars from the lowest to the highest seed;
    hollow markers for unseen configurations; perplexity on a log axis."""
    panels = []
    for group in experiment_groups(results):
        q = _quantized(group.rows)
        if len(q):
            panels.append((group, [(m, rows, {}) for m, rows in q.groupby("method", sort=True)]))
    return _group_figure(panels, title, "no quantized evaluations")


def seed_summary(rows: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Per configuration: avg_bits, unseen, the mean value over seeds (geometric for
    lower-is-better metrics such as perplexity), its lowest and highest seed, and n_seeds."""

    def centre(values):
        return values.mean() if higher_is_better else float(np.exp(np.log(values).mean()))

    summary = rows.groupby("config_name").agg(
        avg_bits=("avg_bits", "first"),
        unseen=("unseen", "any"),
        value=("value", centre),
        low=("value", "min"),
        high=("value", "max"),
        n_seeds=("seed", "nunique"),
    )
    return summary.sort_values("avg_bits")


def _plot_method(ax, rows: pd.DataFrame, label: str, higher_is_better: bool, **style) -> None:
    """One method's line through its seed means; bars span the seeds (when there are
    several); filled markers for seen configurations, hollow for unseen."""
    points = seed_summary(_quantized(rows), higher_is_better)
    seeds = int(points["n_seeds"].max()) if len(points) else 0
    label = f"{label} ({seeds} seeds)" if seeds > 1 else label
    line = ax.plot(points["avg_bits"], points["value"], label=label, alpha=0.8, **style)[0]
    color = line.get_color()
    if seeds > 1:
        ax.errorbar(
            points["avg_bits"], points["value"],
            yerr=[points["value"] - points["low"], points["high"] - points["value"]],
            fmt="none", ecolor=color, alpha=0.6, capsize=3,
        )  # fmt: skip
    seen, unseen = points[~points["unseen"]], points[points["unseen"]]
    ax.scatter(seen["avg_bits"], seen["value"], color=color, zorder=3)
    ax.scatter(unseen["avg_bits"], unseen["value"], facecolors="white", edgecolors=color, zorder=3)


# One panel per group: the group and its lines (legend label, rows, line style).
Panel = tuple[Group, list[tuple[str, pd.DataFrame, dict]]]


def _group_figure(panels: list[Panel], title: str, empty: str):
    """One axes per group, or (no panels) one empty axes with a centred ``no data`` note."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(6.4 * n, 4.4), dpi=120, squeeze=False)
    if not panels:
        ax = axes[0][0]
        ax.text(0.5, 0.5, f"no data: {empty}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title)
    markers = [
        Line2D([], [], ls="", marker="o", color="gray", label="seen (filled)"),
        Line2D([], [], ls="", marker="o", mfc="white", color="gray", label="unseen (hollow)"),
    ]
    bars = Line2D([], [], ls="-", marker="|", color="gray", label="bars: lowest to highest seed")
    for ax, (group, lines) in zip(axes[0], panels, strict=False):
        for label, rows, style in lines:
            _plot_method(ax, rows, label, group.higher_is_better, **style)
        full = group.rows[group.rows["quantizer"] == "none"]
        if len(full):
            ax.axhline(full["value"].mean(), color="black", ls=":", lw=1, label="full precision")
        lower = "" if group.higher_is_better else " (lower is better, log scale)"
        if not group.higher_is_better:
            ax.set_yscale("log")  # perplexities span decades at low bits
        ax.set_xlabel("average bits per parameter")
        ax.set_ylabel(group.metric + lower)
        ax.set_title(f"{title} {group.model} / {group.task} / {group.quantizer}".strip())
        ax.grid(alpha=0.3)
        seeded = [bars] if group.rows["seed"].nunique() > 1 else []
        ax.legend(handles=ax.get_legend_handles_labels()[0] + markers + seeded, fontsize=8)
    fig.tight_layout()
    return fig


def seen_unseen_figure(results: pd.DataFrame, title: str = ""):
    """Metric vs bits for the methods evaluated on unseen configurations (and ``none``):
    filled markers seen, hollow unseen."""
    panels = []
    for group in experiment_groups(results):
        q = _quantized(group.rows)
        methods = set(q.loc[q["unseen"], "method"]) - {"none"}
        if methods:
            shown = q[q["method"].isin(methods | {"none"})]
            panels.append((group, [(m, rows, {}) for m, rows in shown.groupby("method")]))
    return _group_figure(panels, title, TABLES["seen_unseen"][1])


def search_ablation_figure(results: pd.DataFrame, title: str = ""):
    """Metric vs bits, one line per CoA-LoRA label with differing search modes; QLoRA and the
    unadapted base (dashed) as references when present."""
    panels = []
    for group in experiment_groups(results):
        search = _search_rows(group).groupby(["method", "search_mode"], sort=True)
        lines = [(f"{method} ({mode})", rows, {}) for (method, mode), rows in search]
        for method, color in ((REFERENCE_METHOD, "black"), ("none", "gray")):
            rows = group.rows[group.rows["method"] == method]
            if lines and len(rows):
                lines.append((method, rows, {"ls": "--", "color": color}))
        if lines:
            panels.append((group, lines))
    return _group_figure(panels, title, TABLES["search"][1])


FIGURES = {
    "pareto": pareto_figure,
    "seen-unseen": seen_unseen_figure,
    "search-ablation": search_ablation_figure,
}
