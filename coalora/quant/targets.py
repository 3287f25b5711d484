"""Which linear layers of a transformers model are quantized, and their identities.

LLaMA / Qwen / Mistral: ``layers.{i}.self_attn.{q,k,v,o}_proj`` and ``layers.{i}.mlp.{gate,up,down}_proj``.
BERT / RoBERTa: ``layer.{i}.attention.self.{query,key,value}``, ``layer.{i}.attention.output.dense``,
``layer.{i}.intermediate.dense`` and ``layer.{i}.output.dense``. The two ``output.dense`` modules
get distinct type names (``attn_output`` and ``ffn_output``): they play different roles.
Embeddings, norms, poolers and heads are never quantized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# Global order of module types; the configuration-aware model embeds a type by its position
# here, so append new types at the end.
MODULE_TYPES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "query",
    "key",
    "value",
    "attn_output",
    "intermediate",
    "ffn_output",
)

# (regex on the module's full name, module type). Group 1 is the layer index.
_PATTERNS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), mtype)
    for pattern, mtype in [
        (r"(?:^|\.)layers\.(\d+)\.self_attn\.q_proj$", "q_proj"),
        (r"(?:^|\.)layers\.(\d+)\.self_attn\.k_proj$", "k_proj"),
        (r"(?:^|\.)layers\.(\d+)\.self_attn\.v_proj$", "v_proj"),
        (r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj$", "o_proj"),
        (r"(?:^|\.)layers\.(\d+)\.mlp\.gate_proj$", "gate_proj"),
        (r"(?:^|\.)layers\.(\d+)\.mlp\.up_proj$", "up_proj"),
        (r"(?:^|\.)layers\.(\d+)\.mlp\.down_proj$", "down_proj"),
        (r"(?:^|\.)layer\.(\d+)\.attention\.self\.query$", "query"),
        (r"(?:^|\.)layer\.(\d+)\.attention\.self\.key$", "key"),
        (r"(?:^|\.)layer\.(\d+)\.attention\.self\.value$", "value"),
        (r"(?:^|\.)layer\.(\d+)\.attention\.output\.dense$", "attn_output"),
        (r"(?:^|\.)layer\.(\d+)\.intermediate\.dense$", "intermediate"),
        (r"(?:^|\.)layer\.(\d+)\.output\.dense$", "ffn_output"),
    ]
)


@dataclass(frozen=True)
class QuantTarget:
    """One quantizable weight matrix."""

    name: str  # module name in ``model.named_modules()``
    module_type: str  # one of MODULE_TYPES
    layer_index: int
    shape: tuple[int, int]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def type_index(self) -> int:
        return MODULE_TYPES.index(self.module_type)


def _match(name: str) -> tuple[str, int] | None:
    for pattern, mtype in _PATTERNS:
        found = pattern.search(name)
        if found:
            return mtype, int(found.group(1))
    return None


def quantizable_targets(model: nn.Module) -> list[QuantTarget]:
    """The model's quantizable linear layers, in module order.

    Raises ``ValueError`` when the model has none (an unsupported architecture).
    """
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        found = _match(name)
        if found is None:
            continue
        mtype, layer = found
        targets.append(QuantTarget(name, mtype, layer, tuple(module.weight.shape)))
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no quantizable linear layers: supported are "
            "LLaMA/Qwen-style (q/k/v/o/gate/up/down_proj) and BERT/RoBERTa-style encoders"
        )
    return targets


def num_layers(targets: list[QuantTarget]) -> int:
    return max(t.layer_index for t in targets) + 1
