"""The named tasks (``TASKS``, ``list_tasks``) and ``load_task``, which finds a task's source
(Bible builder, local files or the hub), applies the split policy and the size limits."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .bible import _BIBLE_BUILDERS, BIBLE_TASKS
from .hub import _HUB, HUB_TASKS, _load_hub
from .local import _env_copy, _load_dir
from .splits import _from_sources, _limit
from .task import TaskData, TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (*BIBLE_TASKS, *HUB_TASKS)}


def list_tasks() -> list[TaskSpec]:
    return list(TASKS.values())


def load_task(
    name: str,
    *,
    max_train: int | None = None,
    max_eval: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> TaskData:
    """Load a task's fixed train/validation/test splits.

    ``name``: a name from ``TASKS`` or ``local:<dir>``. ``max_train`` caps the train split and
    ``max_eval`` the validation and test splits (a seeded stratified sample for classification,
    a prefix of documents for lm). ``data_dir`` (or ``$COALORA_DATA/<name>``) holds a local copy
    of a hub task, used instead of the hub.
    """
    for label, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{label} must be a positive integer or None, got {value!r}")
    if name.startswith("local:"):
        directory = Path(name.removeprefix("local:")).expanduser()
        spec, splits = _load_dir(directory, None, name)
        data = _from_sources(spec, splits)
    elif name in _BIBLE_BUILDERS:
        data = _bible_task(name)
    elif name in _HUB:
        spec = TASKS[name]
        local = Path(data_dir).expanduser() if data_dir is not None else _env_copy(name)
        if local is not None:
            spec, splits = _load_dir(local, spec, name)
        else:
            splits = _load_hub(spec)
        data = _from_sources(spec, splits)
    else:
        raise ValueError(
            f"unknown task {name!r}: expected one of {', '.join(TASKS)} or local:<directory>"
        )
    return TaskData(
        data.spec,
        _limit(data.train, max_train, data.spec, "train"),
        _limit(data.validation, max_eval, data.spec, "validation"),
        _limit(data.test, max_eval, data.spec, "test"),
    )


@functools.cache
def _bible_task(name: str) -> TaskData:
    return _BIBLE_BUILDERS[name](TASKS[name])
