"""Per-method metric gaps between two runs of one design (e.g. the same seeds and batches in
bf16 and in fp32): ``coalora compare``'s "Metric gaps" section and its ``--gaps`` CSV.

Records present in both runs are paired by path (``<exp>/<method>/s<seed>/eval/<cfg>.json``).
Per experiment and method, the gap of a seed is the mean over its configurations of (B - A)
on the report's gap scale (``report.gap_scale``: points for accuracy-like metrics,
``-100 ln(perplexity)`` for perplexity, so a positive gap means B is better), and the gap's
95% interval counts both noise sources the claims count (``coalora.verdicts.stats``): seed to seed,
and a paired bootstrap of the test examples shared by all the records of the experiment.

``BOUND``, fixed before any run was compared: a numerics change (another compute dtype,
machine or library) should move no method by more than 1 point of accuracy or 1% of
perplexity; ``within_bound`` says whether the interval lies inside +-BOUND (None: no
interval, a single measurement).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from ..report import gap_scale
from . import stats

BOUND = 1.0
GAP_COLUMNS = [
    "experiment", "method", "metric", "unit", "n_seeds", "n_configs", "effect", "low", "high",
    "noise", "within_bound", "dtype_a", "dtype_b",
]  # fmt: skip


def _dtypes(records: list[dict]) -> str:
    return "/".join(sorted({(r.get("protocol") or {}).get("dtype", "float32") for r in records}))


def metric_gaps(a: dict[str, dict], b: dict[str, dict], bound: float = BOUND) -> pd.DataFrame:
    """One row per (experiment, method) with records in both runs (``GAP_COLUMNS``)."""
    groups: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    for path in sorted(set(a) & set(b)):
        exp, method, seed_dir, _, name = PurePosixPath(path).parts
        groups[(exp, method)].append((int(seed_dir[1:]), PurePosixPath(name).stem, path))
    rows = []
    for (exp, method), items in sorted(groups.items()):
        first = a[items[0][2]]
        metric, higher = first["primary_metric"], bool(first["higher_is_better"])
        records = [run[path] for run in (a, b) for _, _, path in items]
        flat = [{"value": r["metrics"][metric], "per_example": r["per_example"]} for r in records]
        scaled = gap_scale(stats.resampled_values(flat, metric), higher)
        n = len(items)
        diff = scaled[n:] - scaled[:n]  # (records, 1 + bootstrap replicates)
        seeds = sorted({seed for seed, _, _ in items})
        rows_of = {s: [i for i, (seed, _, _) in enumerate(items) if seed == s] for s in seeds}
        interval = stats.interval_of(
            lambda s, c, diff=diff, rows_of=rows_of: float(np.mean(diff[rows_of[s], c])),
            seeds,
            diff.shape[1],
            stats.example_count(flat[0]["per_example"]) if diff.shape[1] > 1 else None,
        )
        within = None
        if interval.decided:
            within = bool(interval.low >= -bound and interval.high <= bound)
        rows.append(
            {
                "experiment": exp,
                "method": method,
                "metric": metric,
                "unit": "points" if higher else "-100*dln(ppl)",
                "n_seeds": len(seeds),
                "n_configs": len({cfg for _, cfg, _ in items}),
                "effect": interval.effect,
                "low": interval.low,
                "high": interval.high,
                "noise": interval.noise,
                "within_bound": within,
                "dtype_a": _dtypes(records[:n]),
                "dtype_b": _dtypes(records[n:]),
            }
        )
    return pd.DataFrame(rows, columns=GAP_COLUMNS)
