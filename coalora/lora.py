"""LoRA over the (quantized) linear layers of a model, with an optional r x r mixing matrix.

For one targeted linear layer with (dequantized) weight ``W``, input ``x`` and LoRA factors
``A`` (r x in) and ``B`` (out x r)::

    y = W x + bias + (alpha / r) * B (I + M) A dropout(x)

``M`` is the mixing matrix the configuration-aware model produces for the layer's current
quantization configuration (docs/method.md section 3); it already includes the learnable scalar
``s`` (``M = s * U``). With ``M`` unset (``None``) the layer is exactly peft's LoRA.

``LoraLinear`` *wraps* the existing ``nn.Linear`` (kept as ``.base_layer``) instead of copying
its weight: ``coalora.quant.apply.QuantizedBase`` holds references to those same
``nn.Linear`` objects and keeps switching their weights between configurations after the
LoRA is injected. Build the ``QuantizedBase`` *before* calling ``inject_lora``: afterwards
the targeted names point at ``LoraLinear`` wrappers, which ``quantizable_targets`` does not
recognise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quant.targets import MODULE_TYPES, QuantTarget, quantizable_targets

# Names of the task heads of sequence-classification models (peft's default
# ``modules_to_save`` for SEQ_CLS): BERT / RoBERTa ``classifier``, LLaMA / Qwen ``score``.
TASK_HEAD_NAMES: tuple[str, ...] = ("classifier", "score")


@dataclass(frozen=True)
class LoraConfig:
    """Hyper-parameters of the LoRA adapters (official scripts: r=64, alpha=16, dropout=0)."""

    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.0
    # Module types (``coalora.quant.targets.MODULE_TYPES``) that get an adapter; None = all.
    target_types: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_types is not None:
            unknown = [t for t in self.target_types if t not in MODULE_TYPES]
            if unknown or not self.target_types:
                raise ValueError(
                    f"LoRA target_types {list(self.target_types)!r}: unknown {unknown}; "
                    f"allowed values: {', '.join(MODULE_TYPES)}"
                )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def select(self, targets: list[QuantTarget]) -> list[QuantTarget]:
        """The targets whose module type gets an adapter."""
        if self.target_types is None:
            return list(targets)
        chosen = [t for t in targets if t.module_type in self.target_types]
        if not chosen:
            raise ValueError(
                f"LoRA target_types {list(self.target_types)} match none of the model's "
                f"module types {sorted({t.module_type for t in targets})}"
            )
        return chosen

    def inject(self, model: nn.Module, targets: list[QuantTarget] | None = None):
        """``inject_lora`` with these settings on the selected targets; returns the wrappers."""
        if targets is None:
            targets = quantizable_targets(model)
        return inject_lora(model, self.select(targets), self.r, self.alpha, self.dropout, self.seed)


class LoraLinear(nn.Module):
    """``base_layer(x) + (alpha/r) * B (I + M) A dropout(x)``; the base layer stays frozen.

    ``lora_A`` has shape [r, in_features] and ``lora_B`` [out_features, r] (peft's
    ``lora_A.weight`` / ``lora_B.weight``). The factors are kept in ``dtype`` (fp32 by
    default, as peft does for half-precision bases); the input is cast to that dtype for the
    adapter path and the update cast back to the base output's dtype.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"LoraLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.dropout_p = float(dropout)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # peft's default init: A as nn.Linear's default (Kaiming-uniform, a=sqrt(5)), B = 0,
        # so the adapted model starts equal to the base model. Drawn on the CPU from the
        # given generator so the same seed gives the same factors on any device.
        lora_a = torch.empty(r, base_layer.in_features, dtype=dtype)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=generator)
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(lora_a.to(device))
        self.lora_B = nn.Parameter(
            torch.zeros(base_layer.out_features, r, dtype=dtype, device=device)
        )
        # The current mixing matrix M (r x r) or None. A plain attribute, not a parameter or
        # buffer: it is an output of the configuration-aware model (gradients flow back to
        # that model through it) and is never saved with the adapter.
        self.mixing: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def set_mixing(self, mixing: torch.Tensor | None) -> None:
        """Set the r x r matrix M (already scaled by s) or clear it with None (plain LoRA)."""
        if mixing is not None and tuple(mixing.shape) != (self.r, self.r):
            raise ValueError(
                f"mixing matrix must have shape ({self.r}, {self.r}), got {tuple(mixing.shape)}"
            )
        self.mixing = mixing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast it casts itself
            x = x.to(self.lora_A.dtype)
        h = F.linear(self.lora_dropout(x), self.lora_A)
        if self.mixing is not None:
            # (I + M) applied to the column vector A x  ==  row vector h + h M^T.
            h = h + F.linear(h, self.mixing.to(h.dtype))
        if self._fuses_update and result.dtype == h.dtype:
            return self._add_update(result, h)
        update = F.linear(h, self.lora_B) * self.scaling
        return result + update.to(result.dtype)

    @property
    def _fuses_update(self) -> bool:
        """Whether ``result + scaling * (h B^T)`` can be one GEMM with the same bits.

        A power-of-two scaling (1 when alpha = r, 1/4 at the paper's r=64, alpha=16)
        multiplies exactly, so GEMM's ``C + alpha * (h B^T)`` rounds as the separate product,
        scaling and sum do (``tests/test_lora.py`` checks the bits, forward and backward).
        """
        mantissa, _ = math.frexp(self.scaling)
        return mantissa == 0.5

    def _add_update(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``result + scaling * h B^T`` accumulated by the GEMM itself: no separate update
        tensor, scaling pass or sum pass over the [tokens, out_features] output (these
        memory-bound passes were about a tenth of a CPU forward). Without autograd the sum
        goes into the base layer's fresh output in place."""
        rows = h.reshape(-1, self.r)
        if not torch.is_grad_enabled() and result.is_contiguous():
            # In-place ops are not autocast: B joins the output's dtype (bf16 under autocast).
            lora_b = self.lora_B.to(result.dtype)
            result.view(-1, result.shape[-1]).addmm_(rows, lora_b.t(), alpha=self.scaling)
            return result
        flat = torch.addmm(
            result.reshape(-1, result.shape[-1]), rows, self.lora_B.t(), alpha=self.scaling
        )
        return flat.view(result.shape)

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha/r) B (I + M) A that this adapter adds to the base weight."""
        b = self.lora_B
        if self.mixing is not None:
            b = b + b @ self.mixing.to(b.dtype)
        return self.scaling * (b @ self.lora_A)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, dropout={self.dropout_p:g}"
        )


def task_head_names(model: nn.Module) -> list[str]:
    """Top-level task heads of a sequence-classification model (trained with the adapter)."""
    children = dict(model.named_children())
    return [name for name in TASK_HEAD_NAMES if name in children]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_lora(
    model: nn.Module,
    targets: list[QuantTarget] | None = None,
    r: int = 64,
    alpha: float = 16.0,
    dropout: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, LoraLinear]:
    """Wrap each targeted nn.Linear of ``model`` in a ``LoraLinear``, in place.

    Every parameter of the model is frozen except the LoRA factors and, for
    sequence-classification models, the task head (``task_head_names``). ``targets``
    defaults to ``quantizable_targets(model)``. Factors are drawn in target order from one
    generator seeded with ``seed``. Returns the wrappers by module name (target order).
    """
    if targets is None:
        targets = quantizable_targets(model)
    if not targets:
        raise ValueError("inject_lora: no target modules given")
    modules = dict(model.named_modules())
    for t in targets:
        found = modules.get(t.name)
        if found is None:
            raise ValueError(f"inject_lora: module {t.name!r} is not in the model")
        if isinstance(found, LoraLinear):
            raise ValueError(f"inject_lora: module {t.name!r} already has a LoRA adapter")
        if not isinstance(found, nn.Linear):
            raise ValueError(
                f"inject_lora: module {t.name!r} is a {type(found).__name__}, not nn.Linear"
            )
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    wrappers: dict[str, LoraLinear] = {}
    for t in targets:
        wrapper = LoraLinear(modules[t.name], r, alpha, dropout, generator=generator, dtype=dtype)
        _set_submodule(model, t.name, wrapper)
        wrappers[t.name] = wrapper
    for head in task_head_names(model):
        for p in model.get_submodule(head).parameters():
            p.requires_grad_(True)
    return wrappers


def lora_wrappers(model: nn.Module) -> dict[str, LoraLinear]:
    """The ``LoraLinear`` modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as it was before ``inject_lora``: each wrapper's base layer under
    the wrapper's own name (``q_proj.base_layer.weight`` -> ``q_proj.weight``), the LoRA
    factors left out; every other entry as the model holds it (task heads included)."""
    wrappers = lora_wrappers(model)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in wrappers:
            continue  # the wrapper's own tensors: lora_A, lora_B
        owner = module.removesuffix(".base_layer")
        state[f"{owner}.{leaf}" if owner in wrappers else key] = value
    return state


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's own tensors: every ``<name>.lora_A`` / ``<name>.lora_B`` and the task
    head's parameters (``classifier.*`` / ``score.*``), detached copies on the CPU.

    The frozen base weights are not included: a checkpoint is only what training changed.
    """
    state: dict[str, torch.Tensor] = {}
    for name, wrapper in lora_wrappers(model).items():
        state[f"{name}.lora_A"] = wrapper.lora_A.detach().cpu().clone()
        state[f"{name}.lora_B"] = wrapper.lora_B.detach().cpu().clone()
    for head in task_head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            state[f"{head}.{pname}"] = p.detach().cpu().clone()
    if not state:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter to save")
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a ``lora_state_dict`` into ``model`` (which must have the same adapters).

    Raises a one-line ``ValueError`` on missing or unexpected keys or a shape mismatch.
    """
    expected = {}
    for name, wrapper in lora_wrappers(model).items():
        expected[f"{name}.lora_A"] = wrapper.lora_A
        expected[f"{name}.lora_B"] = wrapper.lora_B
    for head in task_head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            expected[f"{head}.{pname}"] = p
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise ValueError(f"LoRA checkpoint does not fit the model: {'; '.join(parts)}")
    for key, param in expected.items():
        value = state[key]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"LoRA checkpoint key {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
        param.copy_(value.to(device=param.device, dtype=param.dtype))
