"""Deployment: fold one configuration's mixings into B and write a standard peft adapter.

For a fixed configuration C the adapted layer computes ``B (I + M_C) A``, so ``B' = B (I+M_C)``
turns it into an ordinary LoRA adapter ``(A, B')`` (docs/method.md section 3, "deployment fold").
``export_peft_adapter`` writes it as a directory that ``peft.PeftModel.from_pretrained``
loads with no coalora code::

    adapter_config.json         peft LoraConfig (r, lora_alpha, exact target module names, ...)
    adapter_model.safetensors   base_model.model.<module>.lora_{A,B}.weight (+ the task head)
    qconfig.json                the quantization configuration the adapter was folded for
    coalora_adapter.json        which method wrote it, for which base model

The adapter is only correct on top of the base model quantized under ``qconfig.json``;
``load_peft_adapter`` does both steps. Every method's export writes ``coalora_adapter.json``
(``write_adapter_manifest``), from which ``coalora.methods.load_adapter`` picks the method's
own loader (LQ-LoRA's residual base, GPTQ's base, bitsandbytes, a full model, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from .bnb import import_peft
from .io import atomic_dir, write_json
from .lora import LoraLinear, task_head_names
from .mapper import ConfigAwareMapper
from .quant.apply import apply_qconfig
from .quant.model_config import ModelQConfig
from .quant.targets import QuantTarget, quantizable_targets

if TYPE_CHECKING:
    from peft import PeftModel

# peft is imported where an adapter is written or loaded, not at module import: importing it
# costs seconds of CPU (it pulls transformers' auto classes), which every training and
# evaluation job would otherwise pay without ever writing an adapter. It is imported through
# coalora.bnb.import_peft, which leaves bitsandbytes out (2 s more) until something uses it.

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
QCONFIG_FILE = "qconfig.json"
ADAPTER_MANIFEST = "coalora_adapter.json"
# peft's prefix for the wrapped model's parameters in an adapter file.
PEFT_PREFIX = "base_model.model."


def fold_into_lora(lora_b: torch.Tensor, mixing: torch.Tensor | None) -> torch.Tensor:
    """B' = B (I + M): the plain-LoRA B that reproduces ``B (I + M) A`` with the same A."""
    if mixing is None:
        return lora_b.clone()
    r = lora_b.shape[-1]
    if tuple(mixing.shape) != (r, r):
        raise ValueError(f"mixing matrix must have shape ({r}, {r}), got {tuple(mixing.shape)}")
    return lora_b + lora_b @ mixing.to(lora_b.dtype)


def _task_type(task_type: str):
    TaskType = import_peft().TaskType  # lazy: see the note on peft at the top

    try:
        return TaskType(task_type)
    except ValueError:
        allowed = ", ".join(t.value for t in TaskType)
        raise ValueError(
            f"unknown peft task_type {task_type!r}; allowed values: {allowed}"
        ) from None


def folded_adapter_state(
    model: nn.Module,
    wrappers: dict[str, LoraLinear],
    mapper: ConfigAwareMapper | None,
    mqc: ModelQConfig | None,
    targets: list[QuantTarget],
) -> dict[str, torch.Tensor]:
    """peft-named adapter tensors for ``mqc``: A, folded B' per wrapper, and the task head."""
    if mapper is not None:
        if mqc is None:
            raise ValueError("export with a configuration-aware mapper needs a configuration")
        by_name = {t.name: t for t in targets}
        unknown = [n for n in wrappers if n not in by_name]
        if unknown:
            raise ValueError(f"adapted module {unknown[0]!r} is not among the targets")
        with torch.no_grad():
            mixings = mapper.mixing_for(mqc, [by_name[n] for n in wrappers])
    else:
        # Plain LoRA: a mixing left on a wrapper would make the export disagree with it.
        stale = [n for n, w in wrappers.items() if w.mixing is not None]
        if stale:
            raise ValueError(
                f"wrapper {stale[0]!r} has a mixing matrix set but no mapper was given: pass "
                "the mapper, or clear the mixings (CoALoRA.set_plain) to export plain LoRA"
            )
        mixings = {}
    state: dict[str, torch.Tensor] = {}
    for name, wrapper in wrappers.items():
        lora_b = wrapper.lora_B.detach()
        b_folded = fold_into_lora(lora_b, mixings.get(name))
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = wrapper.lora_A.detach().cpu().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b_folded.cpu().contiguous()
    for head in task_head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            # Clone: safetensors refuses tensors that share memory (tied weights).
            state[f"{PEFT_PREFIX}{head}.{pname}"] = p.detach().cpu().clone().contiguous()
    return state


def write_adapter_manifest(
    directory: str | os.PathLike, method: str, model: nn.Module, base_model: str
) -> None:
    """``coalora_adapter.json``: the method that exported ``directory`` and its base model
    (name, task type and labels, enough to load the base again)."""
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    classifier = bool(task_head_names(model))
    write_json(
        Path(directory) / ADAPTER_MANIFEST,
        {
            "method": method,
            "base_model": base_model,
            "task_type": "SEQ_CLS" if classifier else "CAUSAL_LM",
            "num_labels": num_labels if classifier else None,
        },
    )


def export_peft_adapter(
    model: nn.Module,
    wrappers: dict[str, LoraLinear],
    mapper: ConfigAwareMapper | None,
    mqc: ModelQConfig | None,
    targets: list[QuantTarget],
    out_dir: str | os.PathLike,
    base_model_name_or_path: str,
    task_type: str,
    method: str,
) -> Path:
    """Write the adapter for configuration ``mqc`` as a standard peft directory, atomically.

    ``mapper=None`` exports plain LoRA (the baselines). ``mqc=None`` means an unquantized
    base (no ``qconfig.json``). Needs no training: any configuration, seen or unseen, can be
    exported from a trained mapper. Returns ``out_dir``.
    """
    if not wrappers:
        raise ValueError("export_peft_adapter: no LoRA wrappers given")
    settings = {(w.r, w.alpha, w.dropout_p) for w in wrappers.values()}
    if len(settings) != 1:
        raise ValueError(
            f"export_peft_adapter: the wrappers mix LoRA settings (r, alpha, dropout) "
            f"{sorted(settings)}; a peft adapter directory holds one"
        )
    PeftLoraConfig = import_peft().LoraConfig  # lazy: see the note on peft at the top

    r, alpha, dropout = settings.pop()
    state = folded_adapter_state(model, wrappers, mapper, mqc, targets)
    heads = task_head_names(model)
    peft_config = PeftLoraConfig(
        r=r,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=dropout,
        # Exact module names: peft matches a name or a ".name" suffix, so these select
        # precisely the adapted layers and nothing else.
        target_modules=list(wrappers),
        bias="none",
        modules_to_save=heads or None,
        task_type=_task_type(task_type),
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        peft_config.save_pretrained(str(tmp))
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if mqc is not None:
            mqc.save(tmp / QCONFIG_FILE)
        write_adapter_manifest(tmp, method, model, base_model_name_or_path)
    return out_dir


def load_peft_adapter(
    model: nn.Module, adapter_dir: str | os.PathLike, is_trainable: bool = False
) -> PeftModel:
    """Quantize ``model`` in place under the adapter's ``qconfig.json`` (if it has one), then
    load the adapter with ``PeftModel.from_pretrained``. ``coalora.methods.load_adapter``
    loads any method's export; this is the loader of the plain-LoRA ones."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(
            f"not a peft adapter directory (no {ADAPTER_CONFIG}): {adapter_dir}"
        )
    qconfig_path = adapter_dir / QCONFIG_FILE
    if qconfig_path.is_file():
        apply_qconfig(model, ModelQConfig.load(qconfig_path, quantizable_targets(model)))
    PeftModel = import_peft().PeftModel  # lazy: see the note on peft at the top

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
