"""Evaluating configurations: one model loaded once, many configurations, one results file each.

One driver, ``evaluate_configs(source, configs, ...)``, serves every kind of row. A
``ModelSource`` (``sources.py``: ``Trained``, ``BareBase``) is where "the model under
configuration C" comes from, and what it says about itself in the records.

The driver loads the source and the task once, resolves the configurations (budgets,
qconfig files, ``ModelQConfig`` objects; ``configs.py``), then per configuration asks the
source for the model (timed as set-up), measures it (timed as evaluation; ``measure.py``),
builds the record with ``make_record`` (``records.py``) and writes it atomically as soon as it
is measured. The one-time loading is recorded as ``protocol.load_seconds``.

The command-line entry points (``coalora evaluate``, ``coalora train --evaluate-out``;
``run.py``) only turn flags into a source, configurations and output paths for the driver.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .. import precision
from ..budgets import DEFAULT_ALLOCATION, AllocationSpec
from ..data import TaskData
from .configs import TRAINED, resolve_configs
from .measure import DEFAULT_MAX_LENGTH, EvalSettings, TaskMeasure
from .records import make_record
from .results import write_result
from .sources import ModelSource, Trained


def evaluate_configs(
    source: ModelSource,
    configs: Sequence,
    task: str | None = None,
    out_paths: Sequence[str | os.PathLike] | None = None,
    settings: EvalSettings | None = None,
    allocation: AllocationSpec = DEFAULT_ALLOCATION,
    snapshots_out: str | os.PathLike | None = None,
) -> list[dict]:
    """Evaluate ``source``'s model under many configurations in one process.

    ``configs`` items are ``ModelQConfig`` objects, budgets (floats: the ILP configuration,
    under ``allocation`` with the source's quantizer), qconfig JSON paths, ``TRAINED`` (the
    configuration a method fixed for itself) or ``None`` (full precision: ``BareBase``, or a
    method that serves full precision);
    see ``resolve_configs``. ``task`` defaults to the source's own (a checkpoint's task).
    Each result is written to its ``out_paths`` entry (atomically) as soon as it is
    measured; all are returned. ``snapshots_out``: then also the checkpoint's snapshots (its
    learning curve, ``_measure_snapshots``), their records after the final ones."""
    if not isinstance(source, ModelSource):
        raise TypeError(
            f"evaluate_configs takes a ModelSource (Trained(checkpoint), BareBase(model)), "
            f"got {source!r}"
        )
    settings = settings or EvalSettings()
    paths = _check_out_paths(out_paths, len(configs))
    started = time.perf_counter()
    task_data = source.load(task, settings)
    allocation = dataclasses.replace(allocation, quantizer=source.quantizer)
    mqcs = resolve_configs(configs, source.loaded, source.qbase, allocation)
    mqcs = [source.own_configuration() if m is TRAINED else m for m in mqcs]
    source.check(mqcs)
    device = next(source.loaded.model.parameters()).device
    dtype = precision.resolve(settings.compute_dtype, device)
    source.hold_in(dtype)
    max_length = settings.max_length or source.max_length or DEFAULT_MAX_LENGTH
    measure = TaskMeasure(source.loaded, task_data, settings, max_length)
    load_seconds = time.perf_counter() - started
    common = _common_protocol(task_data, device, dtype, load_seconds, len(mqcs))
    records = _measure_configs(source, mqcs, paths, measure, common, settings)
    if snapshots_out is not None:
        records += _measure_snapshots(
            source, mqcs, paths, measure, common, settings, Path(snapshots_out)
        )
    return records


def _measure_configs(source, mqcs, paths, measure, common: dict, settings) -> list[dict]:
    """Measure the source's model under each configuration; write each record as measured."""
    records = []
    for mqc, path in zip(mqcs, paths, strict=True):
        clock = time.perf_counter()
        model = source.prepare(mqc)
        setup = time.perf_counter() - clock
        clock = time.perf_counter()
        metrics, protocol, per_example = measure.measure(model)
        evaluation = time.perf_counter() - clock
        protocol.update(common)
        protocol["eval_settings"] = asdict(settings)
        protocol.update(source.protocol)
        record = make_record(
            task=measure.task.spec.name,
            mqc=mqc,
            metrics=metrics,
            per_example=per_example,
            primary=measure.primary_metric,
            protocol=protocol,
            setup_seconds=setup,
            eval_seconds=evaluation,
            device=protocol["device"],
            **source.provenance(mqc),
        )
        if path is not None:
            write_result(path, record)
        records.append(record)
    return records


def _measure_snapshots(source, mqcs, paths, measure, common, settings, out: Path) -> list[dict]:
    """The learning curve: each snapshot of a trained run (``coalora.train.snapshot_steps``)
    under the same configurations, on the same test examples, with the lm-eval tasks left
    out (their cost is the full evaluation's; the curve needs the primary metric only).
    Records go to ``out/at-<fraction>/<file name of the final record>``."""
    if not isinstance(source, Trained):
        raise ValueError("snapshots belong to trained runs: give a --checkpoint")
    if any(p is None for p in paths):
        raise ValueError("snapshot records are named after the final records: give their paths")
    curve_settings = dataclasses.replace(settings, lm_eval_tasks=[])
    curve_measure = TaskMeasure(source.loaded, measure.task, curve_settings, measure.max_length)
    records = []
    for name in source.snapshot_names():
        source.switch_to_snapshot(name)
        snap_paths = [out / name / p.name for p in paths]
        records += _measure_configs(source, mqcs, snap_paths, curve_measure, common, curve_settings)
    return records


def _check_out_paths(out_paths, n: int) -> list[Path | None]:
    if out_paths is None:
        return [None] * n
    paths = [Path(p) for p in out_paths]
    if len(paths) != n:
        raise ValueError(f"{len(paths)} output paths for {n} configurations")
    if len(set(paths)) != len(paths):
        raise ValueError("two configurations would write the same output file")
    return paths


def _common_protocol(task: TaskData, device, dtype, load_seconds: float, n_configs: int) -> dict:
    return {
        "task_source": task.spec.source,
        "dtype": precision.record_name(dtype),  # the compute dtype the passes ran in
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "configs_in_process": n_configs,
    }
