"""GPTQ-LoRA: per configuration, the targeted weights quantized by GPTQ (Frantar et al. 2023)
with each matrix's own bit width, then a plain LoRA (B = 0) fine-tuned on top.

GPTQ runs through llmcompressor (``oneshot`` with a ``GPTQModifier``; llmcompressor 0.14 runs
on CPU). Each matrix's option maps to one GPTQ scheme: ``num_bits = b``, symmetric integer
levels, one scale per group of ``group_size = B0`` input columns (llmcompressor's "group"
strategy). GPTQ's scales are stored in the weights' dtype (fp32 here), not double-quantized:
the fields ``b0``, ``d1`` and ``B1`` have no GPTQ counterpart, and the base's real storage is
``b + 32 / B0`` bits per weight (recorded per run as ``storage_avg_bits``), a little more than
the configuration's avg bits. The levels are integers, not NormalFloat.

Calibration [decision]: GPTQ needs inputs, and a method is not given the task's data, so it
uses ``calib_samples`` windows of ``calib_length`` tokens (default: the training max length)
from ``calib_task`` (default ``bible-lm``, the offline general-text corpus standing in for
GPTQ's usual C4 sample), the same for every task. GPTQ runs once when the method is built
(also when a checkpoint is reloaded: the result is deterministic on one machine).

llmcompressor is an optional dependency: ``pip install 'llmcompressor==0.14.*'`` (it keeps
torch and transformers at the project's versions). Without it this method fails with that
instruction. auto-gptq is archived and does not import with transformers 5.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from coalora.data import load_task, make_batches
from coalora.export import export_peft_adapter
from coalora.io import atomic_dir, read_json, write_json
from coalora.methods import Method, Serves
from coalora.quant import ModelQConfig, QuantizedBase
from coalora.quant.targets import QuantTarget

from .common import check_trained_config, with_provenance

INSTALL_HINT = "pip install 'llmcompressor==0.14.*'"
# In an exported adapter: the GPTQ base weights (dequantized) and the run's configuration.
GPTQ_BASE_FILE = "gptq_base.safetensors"
GPTQ_CONFIG_FILE = "gptq_qconfig.json"
# ``QuantizedBase.current`` while the base holds GPTQ's weights.
GPTQ_BASE = "GPTQ base"
PIPELINES = ("sequential", "basic")

if TYPE_CHECKING:
    from peft import PeftModel


def llmcompressor_available() -> bool:
    return importlib.util.find_spec("llmcompressor") is not None


def require_llmcompressor() -> None:
    if not llmcompressor_available():
        raise ValueError(
            f"method 'gptq-lora' needs llmcompressor, which is not installed: {INSTALL_HINT}"
        )


@dataclass(frozen=True)
class GPTQOptions:
    calib_task: str = "bible-lm"
    calib_samples: int = 32
    calib_length: int | None = None  # None: the training settings' max_length
    dampening: float = 0.01
    block_size: int = 128
    # "sequential" feeds each layer the outputs of the already-quantized layers before it
    # (GPTQ's own procedure); "basic" calibrates every layer on full-precision inputs.
    pipeline: str = "sequential"

    def __post_init__(self):
        for name in ("calib_samples", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"gptq-lora option {name!r} must be an integer >= 1, got {value!r}"
                )
        if self.calib_length is not None and (
            not isinstance(self.calib_length, int) or self.calib_length < 2
        ):
            raise ValueError(
                f"gptq-lora option 'calib_length' must be an integer >= 2, got {self.calib_length!r}"
            )
        if not 0 <= self.dampening < 1:
            raise ValueError(
                f"gptq-lora option 'dampening' must be in [0, 1), got {self.dampening!r}"
            )
        if self.pipeline not in PIPELINES:
            raise ValueError(
                f"gptq-lora option 'pipeline' must be one of {PIPELINES}, got {self.pipeline!r}"
            )


def gptq_schemes(mqc: ModelQConfig, targets: list[QuantTarget]) -> dict:
    """llmcompressor ``config_groups``: one scheme per (bits, group size), exact module names."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    groups: dict[tuple[int, int], list[str]] = {}
    for t in targets:
        qc = mqc.modules[t.name]
        if t.shape[1] % qc.B0:
            raise ValueError(
                f"gptq-lora: {t.name} has {t.shape[1]} input columns, not a multiple of B0={qc.B0}"
            )
        groups.setdefault((qc.b, qc.B0), []).append(t.name)
    return {
        f"int{bits}_g{group}": QuantizationScheme(
            targets=[f"re:^{re.escape(name)}$" for name in names],
            weights=QuantizationArgs(
                num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group
            ),
        )
        for (bits, group), names in sorted(groups.items())
    }


def calibration_rows(tokenizer, options: GPTQOptions, length: int, seed: int) -> list[dict]:
    """``calib_samples`` unpadded token rows of ``calib_task``'s training split."""
    task = load_task(options.calib_task, max_train=max(64, options.calib_samples))
    batches = make_batches(task, tokenizer, "train", 1, length, seed=seed)
    if len(batches) < options.calib_samples:
        raise ValueError(
            f"gptq-lora: task {options.calib_task!r} gives {len(batches)} calibration rows of "
            f"{length} tokens, fewer than calib_samples={options.calib_samples}"
        )
    rows = []
    for k in range(options.calib_samples):
        batch = batches.batch(k)
        keep = batch["attention_mask"][0].bool()
        rows.append({key: batch[key][0][keep].tolist() for key in batch if key != "labels"})
    return rows


def gptq_quantize(
    loaded,
    targets: list[QuantTarget],
    mqc: ModelQConfig,
    options: GPTQOptions,
    length: int,
    seed: int,
):
    """GPTQ-quantize a copy of ``loaded.model``; return its dequantized targeted weights."""
    require_llmcompressor()
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.core import reset_session
    from llmcompressor.modifiers.quantization import GPTQModifier
    from loguru import logger

    rows = calibration_rows(loaded.tokenizer, options, length, seed)
    model = copy.deepcopy(loaded.model)
    recipe = GPTQModifier(
        config_groups=gptq_schemes(mqc, targets),
        block_size=options.block_size,
        dampening_frac=options.dampening,
    )
    logger.disable("llmcompressor")  # it logs every module at INFO level
    try:
        with tempfile.TemporaryDirectory(prefix="coalora-gptq-") as tmp:
            # oneshot re-reads the model's config from ``name_or_path``; in-memory models
            # (the tiny ones) have none, so give it the same config on disk.
            model.config.save_pretrained(tmp)
            model.config.name_or_path = tmp
            quantized = oneshot(
                model=model,
                processor=loaded.tokenizer,
                dataset=Dataset.from_list(rows),
                recipe=recipe,
                num_calibration_samples=len(rows),
                max_seq_length=length,
                shuffle_calibration_samples=False,
                pipeline=options.pipeline,
            )
    finally:
        reset_session()
        logger.enable("llmcompressor")
    modules = dict(quantized.named_modules())
    return {t.name: modules[t.name].weight.detach().to(torch.float32).clone() for t in targets}


class GPTQLoRA(Method):
    name = "gptq-lora"
    serves = Serves.TRAINED_CONFIGURATION
    options_cls = GPTQOptions
    setup_reads_base = True  # GPTQ's calibration passes and Hessians

    def setup(self) -> dict:
        require_llmcompressor()
        [mqc] = self.train_configs
        if mqc.quantizer != "nf":
            raise ValueError(
                f"gptq-lora takes its bits from an nf configuration, got quantizer {mqc.quantizer!r}"
            )
        if self.qbase.current is not None:
            self.qbase.restore()  # GPTQ must see the full-precision weights
        length = self.options.calib_length or self.settings.max_length
        started = time.perf_counter()
        self.gptq_weights = gptq_quantize(
            self.loaded, self.targets, mqc, self.options, length, self.settings.seed
        )
        numel = sum(t.numel for t in self.targets)
        storage = sum(
            t.numel * (mqc.modules[t.name].b + 32 / mqc.modules[t.name].B0) for t in self.targets
        )
        self.train_configs = [
            with_provenance(
                mqc,
                {
                    "method": self.name,
                    "library": "llmcompressor GPTQModifier (symmetric int, group strategy)",
                    "options": {**asdict(self.options), "calib_length": length},
                    "gptq_seconds": round(time.perf_counter() - started, 3),
                    "storage_avg_bits": storage / numel,
                },
            )
        ]
        return super().setup()

    def activate(self, mqc: ModelQConfig) -> None:
        check_trained_config(self.name, self.train_configs[0], mqc)
        self.qbase.set_weights(self.gptq_weights, GPTQ_BASE)

    def export(self, mqc: ModelQConfig, out_dir: str | Path, base_model: str) -> Path:
        """A standard peft adapter plus the GPTQ base it belongs on: ``gptq_base.safetensors``
        (the dequantized targeted weights) and ``gptq_qconfig.json`` (the configuration with
        the GPTQ provenance). No ``qconfig.json`` is written: the base is GPTQ's, not the NF
        quantizer's. ``load_gptq_adapter`` rebuilds the adapted model."""
        self.prepare_eval(mqc)
        task_type = "SEQ_CLS" if self.loaded.kind == "classification" else "CAUSAL_LM"
        with atomic_dir(out_dir) as tmp:
            # export_peft_adapter replaces ``tmp`` atomically; the base is added beside it.
            export_peft_adapter(
                self.model,
                self.wrappers,
                None,
                None,
                self.targets,
                tmp,
                base_model,
                task_type,
                method=self.name,
            )
            save_file(
                {n: w.contiguous() for n, w in self.gptq_weights.items()}, str(tmp / GPTQ_BASE_FILE)
            )
            write_json(tmp / GPTQ_CONFIG_FILE, self.train_configs[0].to_dict())
        return Path(out_dir)

    @classmethod
    def load_exported(cls, model: nn.Module, adapter_dir: Path):
        return load_gptq_adapter(model, adapter_dir)


@torch.no_grad()
def load_gptq_adapter(
    model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False
) -> PeftModel:
    """Put an exported GPTQ base into ``model`` (in place) and load the adapter on it."""
    adapter_dir = Path(adapter_dir)
    read_json(adapter_dir / GPTQ_CONFIG_FILE, "GPTQ configuration")  # a clear error if absent
    weights = load_file(adapter_dir / GPTQ_BASE_FILE)
    QuantizedBase(model, cache_bytes=0).set_weights(weights, f"GPTQ base of {adapter_dir}")
    from peft import PeftModel  # lazy: peft costs ~6 s to import (coalora/export.py)

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
