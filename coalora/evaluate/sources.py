"""Where "the model under configuration C" comes from, and what it says about itself in the
records (a ``ModelSource``):

- ``Trained(checkpoint)``: a trained method rebuilt from its checkpoint; each configuration
  is activated in memory with ``method.prepare_eval`` (quantized base weights from the
  ``QuantizedBase`` cache, the adapter for that configuration). Records carry the checkpoint
  hash, training steps and time, and the protocol the ``trained_method`` and
  ``train_settings``.
- ``BareBase(model)``: the base model without any adapter (method ``"none"``); each
  configuration quantizes its weights in place, and a ``None`` configuration is the
  unquantized full-precision reference.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import precision
from ..data import TaskData
from ..io import read_json
from ..methods import Serves
from ..models import LoadedModel, load_model, weights_hash
from ..quant import ModelQConfig, QuantizedBase
from ..quant.model_config import config_identity
from ..runner import TRAIN_CONFIGS_FILE, TRAIN_LOG_FILE, load_trained, model_kind
from ..train import (
    SNAPSHOTS_DIR,
    TrainSettings,
    exposure,
    load_checkpoint,
    resolve_device,
    snapshot_plan,
)
from .measure import EvalSettings, load_eval_task
from .results import directory_hash


class ModelSource(ABC):
    """Where "the model under configuration C" comes from, and its provenance in records.

    ``load`` runs once, first: it loads the model and the task and sets ``loaded`` and
    ``qbase``; then ``prepare`` is called once per configuration."""

    loaded: LoadedModel
    qbase: QuantizedBase
    quantizer: str = "nf"  # of the configurations given as budgets
    max_length: int | None = None  # classification truncation when the settings give none
    protocol: dict  # extra entries of every record's protocol

    @abstractmethod
    def load(self, task: str | None, settings: EvalSettings) -> TaskData:
        """Load the model once; return the task (``None``: the source's own, if it has one)."""

    def check(self, mqcs: Sequence[ModelQConfig | None]) -> None:
        """Refuse, before anything is measured, configurations this source cannot give (by
        default it gives every one)."""
        return None

    @abstractmethod
    def hold_in(self, dtype: torch.dtype) -> None:
        """Hold the model's frozen weights in the compute dtype ``dtype`` (``coalora.precision``),
        once, after the configurations are resolved (cost tables never see it)."""

    @abstractmethod
    def prepare(self, mqc: ModelQConfig | None) -> torch.nn.Module:
        """The model under ``mqc`` (``None``: full precision), in eval mode."""

    def own_configuration(self) -> ModelQConfig:
        """The configuration the source chose for itself (the ``TRAINED`` item)."""
        raise ValueError(f"{type(self).__name__} has no training configuration of its own")

    @abstractmethod
    def provenance(self, mqc: ModelQConfig | None) -> dict:
        """``make_record``'s fields that come from the source: model, method, seen,
        base_hash, checkpoint_hash, seed, train_seconds, train_steps (and exposure, where it
        trained)."""


class Trained(ModelSource):
    """A trained method, rebuilt once from its checkpoint directory (``coalora train --out``,
    via ``coalora.runner.load_trained``); each configuration is activated in memory with
    ``method.prepare_eval``. Budgets use the checkpoint's quantizer; the task defaults to the
    checkpoint's own; quantized configurations only.

    ``label`` is the records' ``method`` (default: the checkpoint's method): a workflow's
    name for an ablation variant such as ``coalora-r32``. The protocol always carries the
    checkpoint's ``trained_method`` and ``train_settings``."""

    def __init__(self, checkpoint: str | os.PathLike, label: str | None = None):
        self.checkpoint = checkpoint
        self.label = label

    def load(self, task: str | None, settings: EvalSettings) -> TaskData:
        self.method, manifest = load_trained(self.checkpoint)
        task_data = load_eval_task(task or manifest["task"], settings)
        spec = task_data.spec
        if spec.kind == "classification" and spec.num_labels != manifest.get("num_labels"):
            raise ValueError(
                f"task {spec.name!r} has {spec.num_labels} labels, the checkpoint's "
                f"classifier {manifest.get('num_labels')}"
            )
        self.loaded, self.qbase = self.method.loaded, self.method.qbase
        self.quantizer = manifest.get("quantizer", "nf")
        train_settings = manifest["settings"]
        self.max_length = train_settings.get("max_length")
        self.protocol = {
            "trained_method": manifest["method"],
            "train_settings": train_settings,
            # The compute dtype the training steps ran in (checkpoints older than the
            # setting trained in fp32).
            "train_dtype": manifest.get("compute_dtype") or "float32",
            # Which configurations the method serves (its class's trait), read by the report.
            "serves": str(self.method.serves),
        }
        self._describe(self.checkpoint, manifest, self.method.train_configs)
        return task_data

    def _describe(self, folder, manifest: dict, train_configs) -> None:
        """What the records say of the checkpoint (or snapshot) now evaluated."""
        self.manifest = manifest
        self.protocol.pop("snapshot", None)
        if manifest.get("snapshot"):  # an evaluable snapshot of a run (its learning curve)
            self.protocol["snapshot"] = manifest["snapshot"]
        self.checkpoint_hash = directory_hash(folder)
        self.trained_keys = {m.key() for m in train_configs}
        log_file = Path(folder) / TRAIN_LOG_FILE
        self.step_log = read_json(log_file, "training log") if log_file.exists() else None

    def snapshot_names(self) -> list[str]:
        """The checkpoint's snapshots (``coalora.train.snapshot_plan``), in step order."""
        settings = TrainSettings.from_dict(self.manifest["settings"])
        return list(snapshot_plan(settings.steps, settings.snapshots))

    def switch_to_snapshot(self, name: str) -> None:
        """Evaluate the snapshot ``name`` from now on: its trained parts replace the loaded
        ones in place (the base is not loaded again), as ``load_trained`` would load it."""
        folder = Path(self.checkpoint) / SNAPSHOTS_DIR / name
        manifest, weights = load_checkpoint(folder)
        if manifest.get("base_weights_hash") != self.manifest.get("base_weights_hash"):
            raise ValueError(f"snapshot {folder} was trained on other base weights")
        configs_file = folder / TRAIN_CONFIGS_FILE
        train_configs = [
            ModelQConfig.from_dict(d, self.qbase.targets, source=str(configs_file))
            for d in read_json(configs_file, "training configurations")
        ]
        try:
            self.method.load_trainable_state(weights)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"snapshot {folder} does not fit its method: {err}") from None
        self._describe(folder, manifest, train_configs)

    def check(self, mqcs):
        if any(m is None for m in mqcs) and self.method.serves != Serves.FULL_PRECISION:
            raise ValueError("a trained method is evaluated under quantized configurations only")

    def own_configuration(self) -> ModelQConfig:
        if self.method.serves != Serves.FIXED_CONFIGURATION:
            return super().own_configuration()
        return self.method.train_configs[0]

    def hold_in(self, dtype):
        self.method.hold_in(dtype)

    def prepare(self, mqc):
        return self.method.prepare_eval(mqc)

    def provenance(self, mqc):
        m = self.manifest
        return {
            "model": m["model"],
            "method": self.label or m["method"],
            "seen": None if mqc is None else mqc.key() in self.trained_keys,
            "base_hash": m["base_weights_hash"],
            "checkpoint_hash": self.checkpoint_hash,
            "seed": m["settings"].get("seed", 0),
            "train_seconds": m.get("train_seconds"),
            "train_steps": m.get("steps"),
            "exposure": (
                None
                if self.step_log is None
                else exposure(self.step_log, config_identity(mqc), m["settings"]["lr"])
            ),
        }


class BareBase(ModelSource):
    """The base model without any adapter (method ``"none"``): reference rows. Each
    configuration quantizes the weights in place (``QuantizedBase.apply``); ``None`` is the
    unquantized full-precision model (config ``"full-precision"``, quantizer ``"none"``).
    Budgets use ``quantizer``; a task must be given; a classifier's head is the untrained
    one drawn from ``seed``."""

    def __init__(self, model: str, seed: int = 0, quantizer: str = "nf"):
        self.model = model
        self.seed = seed
        self.quantizer = quantizer
        self.protocol = {}

    def load(self, task: str | None, settings: EvalSettings) -> TaskData:
        if task is None:
            raise ValueError("the bare base model has no task of its own: give one")
        task_data = load_eval_task(task, settings)
        spec = task_data.spec
        self.loaded = load_model(
            self.model, kind=model_kind(spec.kind), num_labels=spec.num_labels, seed=self.seed
        )
        self.base_hash = weights_hash(self.loaded.model)
        self.loaded.model.to(resolve_device("auto"))
        self.qbase = QuantizedBase(self.loaded.model)
        return task_data

    def hold_in(self, dtype):
        self.loaded.model.requires_grad_(False)  # nothing trains: every weight is frozen
        precision.hold(self.loaded.model, dtype)

    def prepare(self, mqc):
        if mqc is None:
            self.qbase.restore()
        else:
            self.qbase.apply(mqc)
        return self.loaded.model.eval()

    def provenance(self, mqc):
        return {
            "model": self.model,
            "method": "none",
            "seen": None,
            "base_hash": self.base_hash,
            "checkpoint_hash": None,
            "seed": self.seed,
            "train_seconds": None,
            "train_steps": None,
        }
