"""The figures: metric vs average bits, one panel per group.

- ``pareto_figure``: one line per method.
- ``seen_unseen_figure``: the methods evaluated on unseen configurations (and ``none``).
- ``search_ablation_figure``: one line per CoA-LoRA label with differing search modes.
- ``learning_curve_figure``: metric vs optimizer steps (snapshots and the end), one panel per
  group and evaluated configuration, one line per method.

Lines go through the mean over seeds (geometric for perplexity) with bars from the lowest to
the highest seed; filled markers for seen configurations, hollow for unseen. matplotlib is
imported here only, on the first figure (``pyplot``), so importing ``coalora.report`` (and
``coalora.verdicts.claims``) does not load it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .groups import REFERENCE_METHOD, Group, experiment_groups, prepare, quantized, search_rows
from .tables import TABLES


def pyplot():
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
        q = quantized(group.rows)
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
    points = seed_summary(quantized(rows), higher_is_better)
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

    plt = pyplot()
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
        q = quantized(group.rows)
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
        search = search_rows(group).groupby(["method", "search_mode"], sort=True)
        lines = [(f"{method} ({mode})", rows, {}) for (method, mode), rows in search]
        for method, color in ((REFERENCE_METHOD, "black"), ("none", "gray")):
            rows = group.rows[group.rows["method"] == method]
            if lines and len(rows):
                lines.append((method, rows, {"ls": "--", "color": color}))
        if lines:
            panels.append((group, lines))
    return _group_figure(panels, title, TABLES["search"][1])


def learning_curve_figure(results: pd.DataFrame, curves: pd.DataFrame | None, title: str = ""):
    """The learning curves: the primary metric against optimizer steps, at every snapshot
    (``curves``) and at the end, one row of panels per group and one panel per evaluated
    (seen) configuration, one line per method through its seed means (geometric for
    perplexity) with bars from the lowest to the highest seed; the unadapted base dashed; a log
    axis where the values span a decade or more."""
    snapshots = prepare(curves) if curves is not None and len(curves) else None
    rows_of = {}
    for group in experiment_groups(results):
        q = quantized(group.rows)
        q = q[~q["unseen"]]
        if snapshots is not None:  # the same group's snapshot records (one per step)
            mine = snapshots[(snapshots[list(group.key)] == pd.Series(group.key)).all(axis=1)]
            q = pd.concat([q, mine[mine["config_name"].isin(set(q["config_name"]))]])
        for config, rows in q.groupby("config_name", sort=False):
            rows_of.setdefault(tuple(group.key.values()), []).append((group, config, rows))
    plt = pyplot()
    n_rows = max(len(rows_of), 1)
    n_cols = max([len(v) for v in rows_of.values()], default=1)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.8 * n_cols, 3.8 * n_rows), dpi=120, squeeze=False
    )
    if not rows_of:
        axes[0][0].text(0.5, 0.5, "no data: no trained evaluations", ha="center", va="center")
    for ax_row, panels in zip(axes, rows_of.values(), strict=False):
        for ax, (group, config, rows) in zip(ax_row, sorted(panels, key=_by_bits), strict=False):
            _plot_curves(ax, group, rows)
            bits = rows["avg_bits"].iloc[0]
            ax.set_title(
                f"{title} {group.model} / {group.task} / {group.quantizer}\n{config} "
                f"({bits:.2f} bits)".strip(), fontsize=9,
            )  # fmt: skip
    fig.tight_layout()
    return fig


def _by_bits(panel) -> float:
    return float(panel[2]["avg_bits"].iloc[0])


def _plot_curves(ax, group: Group, rows: pd.DataFrame) -> None:
    higher = group.higher_is_better
    values = []
    for method, mine in rows.groupby("method", sort=True):
        if method == "none":
            ax.axhline(mine["value"].mean(), color="gray", ls="--", lw=1, label="unadapted base")
            values += list(mine["value"])
            continue
        trained = mine.dropna(subset=["train_steps"])
        points = seed_summary(trained.assign(config_name=trained["train_steps"]), higher)
        points = points.assign(steps=points.index.astype(float)).sort_values("steps")
        seeds = int(points["n_seeds"].max()) if len(points) else 0
        label = f"{method} ({seeds} seeds)" if seeds > 1 else method
        line = ax.plot(points["steps"], points["value"], marker="o", label=label, alpha=0.8)[0]
        if seeds > 1:
            ax.errorbar(
                points["steps"], points["value"],
                yerr=[points["value"] - points["low"], points["high"] - points["value"]],
                fmt="none", ecolor=line.get_color(), alpha=0.6, capsize=3,
            )  # fmt: skip
        values += list(points["low"]) + list(points["high"])
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_yscale("log")  # values spanning a decade or more
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel(group.metric + ("" if higher else " (lower is better)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


FIGURES = {
    "pareto": pareto_figure,
    "seen-unseen": seen_unseen_figure,
    "search-ablation": search_ablation_figure,
}
