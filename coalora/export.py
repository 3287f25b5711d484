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

``export_model`` (``coalora export``) writes what needs no coalora at all: the base model
under the configuration as a transformers model directory (dequantized), ``qconfig.json``, a
model card, and the method's adapter in ``adapter/`` (docs/export.md).
"""

from __future__ import annotations

import copy
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


# --- a whole model for one configuration (`coalora export`) -------------------------------------

# Where ``export_model`` puts the adapter inside its directory.
ADAPTER_SUBDIR = "adapter"
MODEL_CARD = "README.md"


def checkpoint_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model`` was loaded in (its config's; fp32 for a model built from a config,
    as the tiny ones are): the dtype its weights are held and computed in unless a compute
    dtype says otherwise (``coalora.models.load_model``)."""
    dtype = getattr(model.config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def save_base_model(
    model: nn.Module, state: dict[str, torch.Tensor], tokenizer, out_dir: str | os.PathLike
) -> torch.dtype:
    """``out_dir`` gets a transformers model directory (``save_pretrained``) of ``model``'s
    class and config holding ``state``, every floating-point tensor cast to the model's
    checkpoint dtype, and the tokenizer. Returns that dtype."""
    dtype = checkpoint_dtype(model)
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    # An empty skeleton of the model's own class: no second copy of the weights is drawn.
    with torch.device("meta"):
        skeleton = type(model)(config)
    cast = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype)
        for k, v in state.items()
    }
    skeleton.load_state_dict(cast, strict=True, assign=True)
    skeleton.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return dtype


def model_card(
    *,
    method: str,
    serves: str,
    base_model: str,
    mqc: ModelQConfig | None,
    dtype: torch.dtype,
    auto_class: str,
    adapter: bool,
    checkpoint: str,
    out_dir: str,
) -> str:
    """The directory's README.md: what it holds, where it came from, how to load it."""
    dtype_name = str(dtype).removeprefix("torch.")
    if mqc is None:
        configuration = "none: full precision (nothing quantized)"
        title = f"# {method} on {base_model}, full precision"
    else:
        label = mqc.name or "unnamed"
        configuration = (
            f"{label} ({mqc.quantizer} quantizer, {len(mqc.modules)} matrices), average "
            f"{mqc.avg_bits:.4f} bits per quantized weight: `{QCONFIG_FILE}`"
        )
        title = f"# {method} on {base_model}, configuration {label} ({mqc.avg_bits:.4f} bits)"
    adapter_line = (
        f"- adapter: `{ADAPTER_SUBDIR}/` (peft LoRA; it belongs on these weights, not on the "
        "unquantized base its config names)"
        if adapter
        else "- adapter: none (every weight of this model was trained)"
    )
    load = [f"from transformers import {auto_class}"]
    if adapter:
        load.append("from peft import PeftModel")
    load += ["", f'model = {auto_class}.from_pretrained("{out_dir}", dtype="{dtype_name}")']
    if adapter:
        load.append(f'model = PeftModel.from_pretrained(model, "{out_dir}/{ADAPTER_SUBDIR}")')
    lines = [
        "---",
        f"base_model: {base_model}",
        f"tags: [{', '.join(dict.fromkeys(['coalora', method]))}]",
        "---",
        "",
        title,
        "",
        "Written by `coalora export` (the CoA-LoRA reproducibility harness).",
        "",
        f"- method: `{method}` (serves {serves} configurations)",
        f"- base model: `{base_model}`",
        f"- quantization configuration: {configuration}",
        f"- weights: the base model under that configuration, dequantized, in {dtype_name}",
        adapter_line,
        f"- trained checkpoint: `{checkpoint}`",
        "",
        "## Load",
        "",
        "```python",
        *load,
        "```",
    ]
    if auto_class == "AutoModelForCausalLM":
        peft_arg = f",peft={out_dir}/{ADAPTER_SUBDIR}" if adapter else ""
        lines += [
            "",
            "## Evaluate with lm-eval",
            "",
            "```bash",
            f"python -m lm_eval --model hf --model_args pretrained={out_dir}{peft_arg},"
            f"dtype={dtype_name} --tasks TASKS",
            "```",
        ]
    return "\n".join(lines) + "\n"


def export_model(
    method, mqc: ModelQConfig | None, out_dir: str | os.PathLike, base_model: str, checkpoint: str
) -> Path:
    """Write ``out_dir`` (atomically): ``method``'s base model under ``mqc`` as a transformers
    model directory (``method.base_state``: the weights the harness computes with, dequantized,
    in the checkpoint's dtype), ``qconfig.json``, a model card, and the method's adapter in
    ``adapter/`` (``method.export``, the one writer of adapters), unless the method trained
    the whole model (``method.exports_adapter``). ``mqc`` is a configuration the method
    serves (``method.served_configuration``); None for full precision."""
    out_dir = Path(out_dir)
    loaded = method.loaded
    classifier = loaded.kind == "classification"
    with atomic_dir(out_dir) as tmp:
        if method.exports_adapter:
            method.export(mqc, tmp / ADAPTER_SUBDIR, base_model)
        dtype = save_base_model(loaded.model, method.base_state(mqc), loaded.tokenizer, tmp)
        if mqc is not None:
            mqc.save(tmp / QCONFIG_FILE)
        card = model_card(
            method=method.name,
            serves=str(method.serves),
            base_model=base_model,
            mqc=mqc,
            dtype=dtype,
            auto_class="AutoModelForSequenceClassification"
            if classifier
            else "AutoModelForCausalLM",
            adapter=method.exports_adapter,
            checkpoint=str(checkpoint),
            out_dir=str(out_dir),
        )
        (tmp / MODEL_CARD).write_text(card)
    return out_dir
