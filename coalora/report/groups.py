"""Experiment groups and the statistics shared by every table, figure and claim.

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

Row selections shared by tables, figures and claims: ``quantized`` (no full-precision rows),
``one_factor`` (the variants of a trained method that differ in one ablated setting),
``search_rows`` (the search ablation's CoA-LoRA rows) and ``matched_difference`` (unseen
minus seen at equal average bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..methods import Serves, registered_methods
from ..quant import MAX_BITS, MIN_BITS
from ..search.pareto import hypervolume

REFERENCE_METHOD = "qlora"
# Rows that are references, not trained methods (no adapter or no quantization).
FULL_PRECISION = "full-precision"
GROUP_KEYS = ["model", "task", "quantizer"]


def _serves_of(trained_method: str) -> str | None:
    """What a method serves (its class's trait), for records that predate the record's own
    ``protocol.serves``; None for the reference rows (no trained method)."""
    methods = registered_methods()
    return str(methods[trained_method].serves) if trained_method in methods else None


def prepare(results: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``value`` (the primary metric), ``trained_method``, ``serves``, ``r``,
    ``search_mode`` and ``unseen`` columns."""
    df = results.copy()
    df["value"] = [float(row[f"metrics.{row['primary_metric']}"]) for _, row in df.iterrows()]
    protocols = df["protocol"] if "protocol" in df else pd.Series([{}] * len(df), index=df.index)
    protocols = protocols.map(lambda p: p if isinstance(p, dict) else {})
    settings = protocols.map(lambda p: p.get("train_settings") or {})
    df["trained_method"] = [
        p.get("trained_method", method) for p, method in zip(protocols, df["method"], strict=True)
    ]
    df["serves"] = [
        p.get("serves") or _serves_of(trained)
        for p, trained in zip(protocols, df["trained_method"], strict=True)
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
        reference = self.rows[self.rows["method"] == self.reference]
        is_reference = bool(rows["method"].eq(self.reference).all())
        return {
            "n_seeds": len(hvs),
            "n_configs": int(rows["config_name"].nunique()),
            "hv": float(np.mean(hvs)),
            "hv_sd": float(np.std(hvs, ddof=1)) if len(hvs) > 1 else float("nan"),
            "acc_gap": float("nan") if is_reference else _gap(rows, reference),
            "mean_metric": float(rows["value"].mean()),
            "train_seconds": float(run_totals_per_seed(rows).mean()),
            "train_steps": int(round(run_totals_per_seed(rows, "train_steps").mean())),
        }


def experiment_groups(results: pd.DataFrame, reference: str = REFERENCE_METHOD) -> list[Group]:
    """Split a results frame into (model, task, quantizer) groups, sorted by key; the
    full-precision rows of a (model, task) join each of its quantized groups."""
    df = prepare(results)
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


def run_totals_per_seed(rows: pd.DataFrame, column: str = "train_seconds") -> pd.Series:
    """``column`` (a run's fine-tuning seconds or steps) summed over each seed's runs, one per
    distinct checkpoint (the records of one run share it), by seed."""
    runs = rows.drop_duplicates(["seed", "hashes.checkpoint"])
    return runs.groupby("seed")[column].sum()


def method_hypervolume(points: pd.DataFrame, worst: float | None = None) -> float:
    """HV of one method's (avg_bits, metric) points; see the module docstring. NaN when no
    point lies in the configuration space (a full-precision method at 32 bits has no HV,
    rather than an HV of 0 that would read as the worst possible front)."""
    if points.empty or not (points["avg_bits"] <= MAX_BITS).any():
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


def quantized(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["quantizer"] != "none"]


# The training settings the ablation tables vary, one at a time.
ABLATED_SETTINGS = ("r", "search_mode")


def one_factor(rows: pd.DataFrame, trained: str, varied: str) -> pd.DataFrame:
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


def search_rows(group: Group) -> pd.DataFrame:
    """The group's CoA-LoRA rows at its main rank if their search modes differ, else an empty
    frame."""
    coalora = group.rows[group.rows["serves"] == Serves.ANY_CONFIGURATION]
    coalora = coalora.dropna(subset=["search_mode"])
    coalora = pd.concat(
        [one_factor(t, trained, "search_mode") for trained, t in coalora.groupby("trained_method")]
        or [coalora]
    )
    return coalora if coalora["search_mode"].nunique() >= 2 else coalora.iloc[0:0]


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
