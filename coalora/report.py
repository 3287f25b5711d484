"""Tables and figures from evaluation results (one JSON per evaluation; nothing else is read).

Main table (``table1``), one row per (task, method):

- ``hv``: hypervolume of the method's (avg_bits, metric) points. Both objectives are
  minimised after a transform: bits as they are, and ``1 - metric`` for metrics in [0, 1]
  where higher is better (accuracy, F1), or the metric itself where lower is better
  (perplexity). The area is normalised by the box between the ideal point
  ``(MIN_BITS, 0)`` and the reference point ``(MAX_BITS, 1)`` for [0, 1] metrics, or
  ``(MAX_BITS, 1.1 * worst value of the task over all methods)`` for lower-is-better metrics
  (so perplexity HVs compare methods within one task, not across tasks). MIN_BITS = 2.032 and
  MAX_BITS = 8.625 are the extremes of the configuration space.
- ``acc_gap``: mean difference to the reference method (QLoRA) over the configurations both
  evaluated (matched by configuration name), in percentage points for [0, 1] metrics
  (method - reference) and in metric units for lower-is-better ones (reference - method), so
  a positive gap always means better than the reference.
- ``train_seconds`` / ``train_steps``: total fine-tuning wall seconds and optimizer steps over
  the method's distinct checkpoints (one per configuration for per-configuration methods).
- ``solutions``: configurations the method can serve: one per run for per-configuration
  methods, 1 for a shared adapter, ``any`` for CoA-LoRA.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .quant import MAX_BITS, MIN_BITS
from .search.pareto import hypervolume

REFERENCE_METHOD = "qlora"
ANY_CONFIGURATION = {"coalora"}
SHARED_ADAPTER = {"shared-lora"}
# Rows that are references, not trained methods (no adapter or no quantization).
REFERENCE_ROWS = {"none", "full-precision"}


def _unit_metric(row) -> bool:
    return bool(row["higher_is_better"])


def method_hypervolume(points: pd.DataFrame, worst: float | None = None) -> float:
    """HV of one method's (avg_bits, metric) points; see the module docstring."""
    if points.empty:
        return float("nan")
    higher = bool(points["higher_is_better"].iloc[0])
    value = points["value"].to_numpy(dtype=float)
    objective = 1.0 - value if higher else value
    ref_y = 1.0 if higher else 1.1 * float(worst if worst is not None else value.max())
    pts = np.column_stack([points["avg_bits"].to_numpy(dtype=float), objective])
    return hypervolume(pts, ref=[MAX_BITS, ref_y], ideal=[MIN_BITS, 0.0])


def _gap(method_rows: pd.DataFrame, reference_rows: pd.DataFrame) -> float:
    merged = method_rows.merge(reference_rows, on="config_name", suffixes=("", "_ref"))
    if merged.empty:
        return float("nan")
    higher = bool(merged["higher_is_better"].iloc[0])
    diff = merged["value"] - merged["value_ref"]
    return float(diff.mean() * 100 if higher else -diff.mean())


def summary_table(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """The main comparison table from a results frame (``coalora.evaluate.results.read_results``).

    ``results`` needs columns: task, method, config_name, avg_bits, primary_metric,
    higher_is_better, metrics.<name>, train_seconds, train_steps, checkpoint hash.
    """
    df = results.copy()
    df["value"] = [row[f"metrics.{row['primary_metric']}"] for _, row in df.iterrows()]
    rows = []
    for task, task_rows in df.groupby("task", sort=True):
        worst = float(task_rows["value"].max())
        ref_rows = task_rows[task_rows["method"] == reference][["config_name", "value"]]
        for method, m in task_rows.groupby("method", sort=True):
            per_ckpt = m.drop_duplicates("hashes.checkpoint")
            if method in ANY_CONFIGURATION:
                solutions = "any"
            elif method in REFERENCE_ROWS:
                solutions = "n/a"
            elif method in SHARED_ADAPTER:
                solutions = "1"
            else:
                solutions = str(len(per_ckpt))
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "metric": m["primary_metric"].iloc[0],
                    "n_configs": len(m),
                    "hv": method_hypervolume(m, worst),
                    "acc_gap": float("nan") if method == reference else _gap(m, ref_rows),
                    "mean_metric": float(m["value"].mean()),
                    "train_seconds": float(per_ckpt["train_seconds"].fillna(0).sum()),
                    "train_steps": int(per_ckpt["train_steps"].fillna(0).sum()),
                    "solutions": solutions,
                }
            )
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub Markdown rendering (no extra dependency)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


# --- figures ------------------------------------------------------------------------------


def pareto_figure(results: pd.DataFrame, title: str = ""):
    """Primary metric vs average bits, one line per method (sorted by bits); hollow markers
    for configurations that are unseen (``seen`` is False)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = results.copy()
    df["value"] = [row[f"metrics.{row['primary_metric']}"] for _, row in df.iterrows()]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, m in df.groupby("method", sort=True):
        m = m.sort_values("avg_bits")
        line = ax.plot(m["avg_bits"], m["value"], "-", label=method, alpha=0.8)[0]
        unseen = m["seen"].eq(False)
        ax.scatter(m.loc[~unseen, "avg_bits"], m.loc[~unseen, "value"], color=line.get_color())
        ax.scatter(
            m.loc[unseen, "avg_bits"],
            m.loc[unseen, "value"],
            facecolors="none",
            edgecolors=line.get_color(),
        )
    metric = df["primary_metric"].iloc[0]
    ax.set_xlabel("average bits per parameter")
    ax.set_ylabel(metric + ("" if df["higher_is_better"].iloc[0] else " (lower is better)"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report_from_cli(args) -> None:
    from .evaluate.results import read_results
    from .io import atomic_path

    results = read_results(args.results)
    if args.report == "table1":
        table = summary_table(results, reference=args.reference)
        with atomic_path(args.out, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        if args.markdown:
            with atomic_path(args.markdown, suffix=".md") as tmp:
                tmp.write_text(to_markdown(table))
        print(f"wrote {args.out}: {len(table)} rows")
    elif args.report == "pareto":
        fig = pareto_figure(results, args.title)
        with atomic_path(args.out, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        if args.svg:
            with atomic_path(args.svg, suffix=".svg") as tmp:
                fig.savefig(tmp, format="svg")
        print(f"wrote {args.out}")
