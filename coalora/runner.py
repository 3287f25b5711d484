"""Glue between the command line (and Snakemake rules) and the library: train, adapt, export.

``run_training`` is THE function behind ``coalora train`` and the workflow's train rule:
it loads the model and task, builds the method's training set of configurations, runs the
shared engine and writes the checkpoint. ``load_trained`` rebuilds a trained method from a
checkpoint for adaptation and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .budgets import DEFAULT_ALLOCATION, AllocationSpec, configs_for_budgets
from .data import load_task, make_batches
from .io import read_json, write_json
from .machine import machine_info
from .methods import get_method
from .models import load_model, weights_hash
from .quant import ModelQConfig, QuantizedBase, quantizable_targets
from .train import (
    TrainSettings,
    clear_resume,
    load_checkpoint,
    resolve_device,
    resumed_snapshots,
    save_checkpoint,
    snapshot_fraction,
    train,
)

log = logging.getLogger(__name__)

TRAIN_CONFIGS_FILE = "train_configs.json"
EPOCH_LOG_FILE = "search_log.json"
# Per optimizer step: the learning rate, the configurations drawn, their losses (exposure and
# the learning curves of the training loss come from it; coalora.train.TrainResult.step_log).
TRAIN_LOG_FILE = "train_log.json"


def model_kind(task_kind: str) -> str:
    return "classification" if task_kind == "classification" else "causal-lm"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "botorch", "scipy", "numpy", "lm-eval"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def parse_settings(
    settings_file: str | None, overrides: list[str], steps: int | None
) -> TrainSettings:
    data = {}
    if settings_file:
        data.update(read_json(settings_file, "training settings file"))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    if steps is not None:
        data["steps"] = steps
    return TrainSettings.from_dict(data)


def training_configs(
    method_cls,
    loaded,
    qbase,
    *,
    budget=None,
    qconfig=None,
    budgets=None,
    allocation: AllocationSpec = DEFAULT_ALLOCATION,
) -> list[ModelQConfig]:
    """The method's training set: a given configuration, one budget, or a budget grid."""
    if qconfig is not None:
        mqc = ModelQConfig.load(qconfig, qbase.targets)
        return [mqc]
    fixed = method_cls.fixed_configs(qbase.targets)
    if fixed is not None and budget is None and budgets is None:
        return fixed
    if method_cls.per_config:
        if budget is None:
            raise ValueError(
                f"method {method_cls.name!r} trains per configuration: give --budget or --qconfig"
            )
        budgets = [budget]
    elif budgets is None:
        budgets = list(method_cls.default_budgets)
    if not budgets:
        raise ValueError(f"method {method_cls.name!r} needs budgets for its training set")
    configs = configs_for_budgets(loaded, budgets, allocation, qbase=qbase)
    unique, seen = [], set()
    for mqc in configs:  # neighbouring budgets can give the same ILP solution
        if mqc.key() not in seen:
            seen.add(mqc.key())
            unique.append(mqc)
    return unique


def run_training(
    *,
    model: str,
    task: str,
    method: str,
    settings: TrainSettings,
    out: str | Path,
    budget=None,
    qconfig=None,
    budgets=None,
    allocation: AllocationSpec = DEFAULT_ALLOCATION,
    max_train=None,
    progress=True,
    stop_after=None,
) -> Path | None:
    """Train ``method`` and write the checkpoint directory ``out`` (atomically).

    ``allocation`` turns budgets into the training configurations; its seed is the
    training seed and its low-rank rank the method's (``allocation_lowrank_rank``).

    ``stop_after`` interrupts after that many steps (resume state kept, no checkpoint
    written; returns None) - used to test resumption.
    """
    method_cls = get_method(method)
    task_data = load_task(task, max_train=max_train)
    kind = model_kind(task_data.spec.kind)
    loaded = load_model(model, kind=kind, num_labels=task_data.spec.num_labels, seed=settings.seed)
    base_hash = weights_hash(loaded.model)
    device = resolve_device(settings.device)
    loaded.model.to(device)
    qbase = QuantizedBase(loaded.model)
    allocation = dataclasses.replace(
        allocation,
        seed=settings.seed,
        lowrank_rank=method_cls.allocation_lowrank_rank(settings),
    )
    train_configs = training_configs(
        method_cls, loaded, qbase, budget=budget, qconfig=qconfig, budgets=budgets,
        allocation=allocation,
    )  # fmt: skip
    runner = method_cls(loaded, qbase, settings, train_configs)
    batches = make_batches(
        task_data,
        loaded.tokenizer,
        "train",
        settings.batch_size,
        settings.max_length,
        seed=settings.seed,
    )
    if (
        hasattr(runner, "attach_search")
        and settings.epoch_steps
        and settings.search_mode != "frozen"
    ):
        held_out = make_batches(
            task_data, loaded.tokenizer, "validation", settings.batch_size, settings.max_length
        )
        runner.attach_search([held_out.batch(k) for k in range(settings.search_eval_batches)])
    started = time.time()
    result = train(
        runner, batches.batch, settings, out=out, progress=progress, stop_after=stop_after
    )
    if result.steps < settings.steps:
        return None
    manifest = {
        "method": method,
        "model": model,
        "task": task,
        "kind": kind,
        "num_labels": task_data.spec.num_labels,
        "quantizer": allocation.quantizer,
        "settings": asdict(settings),
        "base_weights_hash": base_hash,
        "steps": result.steps,
        "compute_dtype": result.dtype,
        "train_seconds": result.seconds,
        "final_loss": result.losses[-1],
        "loss_first_last": [result.losses[0], result.losses[-1]],
        "num_train_configs": len(runner.train_configs),
        "train_avg_bits": [round(m.avg_bits, 4) for m in runner.train_configs],
        "max_train": max_train,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "code_version": __version__,
        "packages": package_versions(),
        "machine": machine_info(device),
    }
    extra = {
        TRAIN_CONFIGS_FILE: [m.to_dict() for m in runner.train_configs],
        TRAIN_LOG_FILE: result.step_log,
    }
    if result.epoch_logs:
        extra[EPOCH_LOG_FILE] = result.epoch_logs
    save_checkpoint(
        out, runner.trainable_state(), manifest, extra, snapshots_of(out, manifest, result)
    )
    clear_resume(out)
    return Path(out)


def snapshots_of(out, manifest: dict, result) -> dict:
    """The run's snapshots (``coalora.train.resumed_snapshots``) as checkpoints of their own
    for ``save_checkpoint``: the final manifest at the snapshot's step (its steps, seconds and
    losses), its training set then and the steps' log up to it."""
    snapshots = {}
    settings = TrainSettings.from_dict(manifest["settings"])
    for name, weights, progress in resumed_snapshots(out, settings):
        step = progress["steps"]
        losses = result.losses[:step]
        snap_manifest = dict(
            manifest,
            steps=step,
            train_seconds=progress["train_seconds"],
            final_loss=losses[-1],
            loss_first_last=[losses[0], losses[-1]],
            num_train_configs=len(progress["train_configs"]),
            train_avg_bits=[round(d["avg_bits"], 4) for d in progress["train_configs"]],
            snapshot={"step": step, "of": manifest["steps"], "fraction": snapshot_fraction(name)},
        )
        files = {
            TRAIN_CONFIGS_FILE: progress["train_configs"],
            TRAIN_LOG_FILE: result.step_log[:step],
        }
        snapshots[name] = (weights, snap_manifest, files)
    return snapshots


def load_trained(checkpoint: str | Path):
    """Rebuild a trained method (model + adapters) from its checkpoint directory."""
    manifest, weights = load_checkpoint(checkpoint)
    settings = TrainSettings.from_dict(manifest["settings"])
    loaded = load_model(
        manifest["model"],
        kind=manifest["kind"],
        num_labels=manifest.get("num_labels"),
        seed=settings.seed,
    )
    if weights_hash(loaded.model) != manifest.get("base_weights_hash"):
        raise ValueError(
            f"checkpoint {checkpoint} was trained on other base weights than {manifest['model']!r} gives now"
        )
    loaded.model.to(resolve_device(settings.device))
    qbase = QuantizedBase(loaded.model)
    configs_file = Path(checkpoint) / TRAIN_CONFIGS_FILE
    train_configs = [
        ModelQConfig.from_dict(d, qbase.targets, source=str(configs_file))
        for d in read_json(configs_file, "training configurations")
    ]
    method = get_method(manifest["method"])(loaded, qbase, settings, train_configs)
    try:
        method.load_trainable_state(weights)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"checkpoint {checkpoint} does not fit its method: {err}") from None
    method.model.eval()
    return method, manifest


def train_from_cli(args) -> None:
    settings = parse_settings(args.settings, args.set, args.steps)
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    out = run_training(
        model=args.model,
        task=args.task,
        method=args.method,
        settings=settings,
        out=args.out,
        budget=args.budget,
        qconfig=args.qconfig,
        budgets=budgets,
        allocation=AllocationSpec.from_cli(args),
        max_train=args.max_train,
    )
    manifest = read_json(Path(out) / "manifest.json")
    print(
        f"wrote {out}: {manifest['steps']} steps in {manifest['train_seconds']:.1f} s, "
        f"loss {manifest['loss_first_last'][0]:.4f} -> {manifest['loss_first_last'][1]:.4f}"
    )


def served_configuration(method, manifest: dict, args) -> ModelQConfig | None:
    """The configuration ``coalora adapt`` / ``coalora export`` write for: ``--budget`` (the
    ILP configuration of that budget under the checkpoint's quantizer, as ``coalora
    evaluate --checkpoint`` derives it), ``--qconfig`` (a configuration file), or neither
    (the method's own, for a method of one configuration); the method refuses one it does
    not serve (``Method.served_configuration``)."""
    from .evaluate.configs import resolve_configs  # lazy: coalora.evaluate imports this module

    asked = None
    if args.budget is not None or args.qconfig is not None:
        spec = dataclasses.replace(
            AllocationSpec.from_cli(args), quantizer=manifest.get("quantizer", "nf")
        )
        item = args.budget if args.budget is not None else args.qconfig
        [asked] = resolve_configs([item], method.loaded, method.qbase, spec)
    return method.served_configuration(asked)


def adapt_from_cli(args) -> None:
    started = time.perf_counter()
    method, manifest = load_trained(args.checkpoint)
    mqc = served_configuration(method, manifest, args)
    method.prepare_eval(mqc)
    method.export(mqc, args.out, manifest["model"])
    bits = "full precision" if mqc is None else f"avg_bits {mqc.avg_bits:.4f}"
    print(f"wrote {args.out}: adapter for {bits} in {time.perf_counter() - started:.1f} s")


def export_from_cli(args) -> None:
    from .export import ADAPTER_SUBDIR, export_model

    started = time.perf_counter()
    method, manifest = load_trained(args.checkpoint)
    mqc = served_configuration(method, manifest, args)
    export_model(method, mqc, args.out, manifest["model"], args.checkpoint)
    bits = "full precision" if mqc is None else f"{mqc.name} (avg_bits {mqc.avg_bits:.4f})"
    adapter = f" + {ADAPTER_SUBDIR}/" if method.exports_adapter else ""
    print(
        f"wrote {args.out}: {method.name} on {manifest['model']} under {bits}{adapter} "
        f"in {time.perf_counter() - started:.1f} s"
    )


def prepare(model: str, task: str, out: str | Path, seed: int = 0) -> dict:
    """Make the model (e.g. SmolLM2's one-time GGUF conversion) and task data ready, and
    record what they are: the workflow's first rule, so later jobs never race to build them."""
    task_data = load_task(task)
    loaded = load_model(
        model, kind=model_kind(task_data.spec.kind), num_labels=task_data.spec.num_labels, seed=seed
    )
    targets = quantizable_targets(loaded.model)
    info = {
        "model": model,
        "task": task,
        "task_kind": task_data.spec.kind,
        "task_metric": task_data.spec.metric,
        "task_sizes": task_data.sizes,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),  # the model's size
        "num_targets": len(targets),
        "quantized_parameters": sum(t.numel for t in targets),
        "base_weights_hash": weights_hash(loaded.model),
        "packages": package_versions(),
    }
    write_json(out, info)
    return info
