"""The results record of one evaluation (``make_record``), schema-checked against
``coalora.evaluate.results``, and the name of its configuration (``config_label``)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from ..data.rehearsal import rehearsal_note
from ..machine import machine_info
from ..quant import ModelQConfig
from ..runner import package_versions
from .results import FULL_PRECISION, SCHEMA, code_version, qconfig_hash, validate_result


def config_label(mqc: ModelQConfig | None) -> str:
    if mqc is None:
        return FULL_PRECISION
    return mqc.name or f"bits-{mqc.avg_bits:.3f}-{qconfig_hash(mqc)[:8]}"


def record_packages() -> dict:
    packages = package_versions()
    try:
        packages["datasets"] = version("datasets")  # lm-eval reads its task data through it
    except PackageNotFoundError:
        pass
    return packages


def make_record(
    *,
    model: str,
    task: str,
    method: str,
    mqc: ModelQConfig | None,
    seen: bool | None,
    metrics: dict,
    per_example: dict | None,
    primary: tuple[str, bool],
    protocol: dict,
    base_hash: str,
    checkpoint_hash: str | None,
    seed: int,
    train_seconds: float | None,
    train_steps: int | None,
    setup_seconds: float,
    eval_seconds: float,
    device: str,
    exposure: dict | None = None,
) -> dict:
    """A schema-checked results record (``coalora.evaluate.results``) of an evaluation on
    ``device`` (the model's; its machine is recorded)."""
    note = rehearsal_note()
    if note is not None:  # a rehearsal's stand-ins: say so in every number it makes
        protocol = {**protocol, "rehearsal": note["scale"]}
    record = {
        "schema": SCHEMA,
        "model": model,
        "task": task,
        "method": method,
        "config_name": config_label(mqc),
        "seen": seen,
        # The full-precision base is fp32 (see protocol.dtype).
        "avg_bits": 32.0 if mqc is None else float(mqc.avg_bits),
        "budget": None if mqc is None or mqc.budget is None else float(mqc.budget),
        "quantizer": "none" if mqc is None else mqc.quantizer,
        "metrics": metrics,
        "per_example": per_example,
        "primary_metric": primary[0],
        "higher_is_better": primary[1],
        "protocol": protocol,
        "hashes": {
            "qconfig": qconfig_hash(mqc),
            "base_weights": base_hash,
            "checkpoint": checkpoint_hash,
        },
        "seed": int(seed),
        "train_seconds": None if train_seconds is None else float(train_seconds),
        "train_steps": None if train_steps is None else int(train_steps),
        "setup_seconds": float(setup_seconds),
        "eval_seconds": float(eval_seconds),
        "exposure": exposure,
        "packages": record_packages(),
        "code_version": code_version(),
        "machine": machine_info(device),
    }
    # What a reader will get back from the file (tuples become lists, and so on).
    return validate_result(json.loads(json.dumps(record)))
