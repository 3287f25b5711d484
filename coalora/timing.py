"""Timing marks for the set-up benchmark (``benchmarks/setup_cost.py``).

They exist to measure where a job's start-up time goes (the target: at most 3 s per job
beyond loading the model weights). A mark is one JSON line ``{"event", "t", "pid"}``
appended to the file named by ``$COALORA_TIMING_FILE``; without that variable ``mark`` does
nothing but read the environment, so the hooks cost nothing in normal runs.

Events, in the order a job passes them:

- ``cli_start``: ``coalora.cli.main`` begins (after the interpreter and ``coalora.cli``
  imported);
- ``model_load_start`` / ``model_loaded``: around ``coalora.models.load_model`` (the model
  weights and tokenizer; a job may load more than once, e.g. ``train --evaluate-out``);
- ``first_step``: the first optimizer step begins (``coalora.train.train``);
- ``first_eval_batch``: the first forward pass of an evaluation begins (classification
  batches, perplexity windows: a causal LM's perplexity always runs before lm-eval);
- ``cli_end``: ``main`` returns.

It also reads the other timing record of a run, Snakemake's ``benchmark:`` files (one TSV per
job under ``results/benchmarks/``): :func:`benchmark_jobs`, for the seed planner
(``coalora.verdicts.seedplan``) and ``benchmarks/run_floor.py``.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

TIMING_ENV = "COALORA_TIMING_FILE"

_seen: set[str] = set()


def mark(event: str, once: bool = False) -> None:
    """Append ``{"event": event, "t": time.time(), "pid": ...}`` to ``$COALORA_TIMING_FILE``
    (no-op when unset). ``once``: record only the first such event of this process."""
    path = os.environ.get(TIMING_ENV)
    if not path:
        return
    if once:
        if event in _seen:
            return
        _seen.add(event)
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid()})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def marked(start: str, end: str):
    """Decorator: mark ``start`` before each call and ``end`` after it (also on error)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            mark(start)
            try:
                return fn(*args, **kwargs)
            finally:
                mark(end)

        return inner

    return wrap


def read_marks(path: str | os.PathLike) -> list[dict]:
    """The marks of a timing file, in the order written."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


BENCHMARKS_DIR = "benchmarks"  # under a run's results folder: Snakemake's job timings


def benchmark_seconds(tsv: str | os.PathLike) -> float:
    """A job's wall seconds (column ``s``) from its Snakemake benchmark file."""
    with open(tsv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{tsv} is not a Snakemake benchmark file (no 's' column)")
    try:
        return float(rows[0]["s"])
    except ValueError:
        raise ValueError(f"{tsv}: its 's' is not a number: {rows[0]['s']!r}") from None


def benchmark_jobs(results: str | os.PathLike) -> Iterator[tuple[Path, tuple[str, ...], float]]:
    """Every job of a finished run: (its benchmark file, the file's path parts under
    ``results/benchmarks/``, its wall seconds), in path order. One part: a job of all
    experiments together (tables, claims); else ``(experiment, [method, s<seed>,] file)``."""
    root = Path(results) / BENCHMARKS_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"{results}: no {BENCHMARKS_DIR}/ folder (Snakemake's job timings)")
    for tsv in sorted(root.rglob("*.tsv")):
        yield tsv, tsv.relative_to(root).parts, benchmark_seconds(tsv)
