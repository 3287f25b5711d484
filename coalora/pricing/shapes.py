"""The paper's models by their published shapes (each hub model's ``config.json``).

``benchmarks/paper_shapes.py`` builds random-weight models of these shapes to measure costs
on a GPU; ``coalora price`` maps a config's model to its shape and scales measured costs by
block parameters: the parameters of the transformer blocks (transformers'
``num_parameters(exclude_embeddings=True)`` of the bare model, counted on the meta device),
which a random-weight stand-in keeps exactly (its vocabulary is a tiny tokenizer's).
"""

from __future__ import annotations

import functools

PAPER_SHAPES = {
    "roberta-large": dict(
        hub="FacebookAI/roberta-large", family="roberta", kind="classification",
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    ),
    "qwen2.5-1.5b": dict(
        hub="Qwen/Qwen2.5-1.5B", family="qwen2", kind="causal-lm", hidden_size=1536,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960,
    ),
    "qwen2.5-3b": dict(
        hub="Qwen/Qwen2.5-3B", family="qwen2", kind="causal-lm", hidden_size=2048,
        num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
        intermediate_size=11008,
    ),
    "llama-2-7b": dict(
        hub="meta-llama/Llama-2-7b-hf", family="llama", kind="causal-lm", hidden_size=4096,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008,
    ),
}  # fmt: skip
DESCRIPTIVE = ("hub", "family", "kind")  # keys that are not transformers config fields


def shape_of(model: str) -> str | None:
    """The paper shape a config's ``model`` names (its hub id or the shape's own name)."""
    for name, shape in PAPER_SHAPES.items():
        if model.lower() in (name, shape["hub"].lower()):
            return name
    return None


def transformers_config(name: str, vocab_size: int, layers: int | None = None, **extra):
    """The transformers config of shape ``name`` (``layers``: only that many blocks)."""
    from transformers import LlamaConfig, Qwen2Config, RobertaConfig

    shape = {k: v for k, v in PAPER_SHAPES[name].items() if k not in DESCRIPTIVE}
    if layers:
        shape["num_hidden_layers"] = layers
    family = PAPER_SHAPES[name]["family"]
    if family == "roberta":
        return RobertaConfig(vocab_size=vocab_size, max_position_embeddings=514, **shape, **extra)
    cls = Qwen2Config if family == "qwen2" else LlamaConfig
    return cls(
        vocab_size=vocab_size, max_position_embeddings=4096, tie_word_embeddings=False,
        **shape, **extra,
    )  # fmt: skip


@functools.cache
def block_parameters(name: str, layers: int | None = None) -> int:
    """Parameters of shape ``name``'s transformer blocks (``layers`` of them, default all)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(transformers_config(name, vocab_size=8, layers=layers))
    return model.num_parameters(exclude_embeddings=True)
