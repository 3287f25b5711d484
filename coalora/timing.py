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
"""

from __future__ import annotations

import functools
import json
import os
import time

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
