"""Tiny random models of the paper's architectures (Llama for the causal LMs, BERT/RoBERTa for
the encoders), seeded, shared by the tests. Small enough to build in milliseconds; the same
module types and layouts as the real models, including grouped-query attention for Llama."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)


def llama_config(layers: int = 2, vocab_size: int = 64, **kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **kw,
    )


def tiny_llama(seed: int = 0, layers: int = 2, vocab_size: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(layers, vocab_size)).eval()


def tiny_llama_classifier(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(num_labels=3, pad_token_id=0)).eval()


def _encoder_config(config_cls, layers: int, vocab_size: int, num_labels: int):
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )


def tiny_bert(
    seed: int = 0, layers: int = 2, vocab_size: int = 64, num_labels: int = 3
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = _encoder_config(BertConfig, layers, vocab_size, num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_roberta(seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = _encoder_config(RobertaConfig, 2, 64, 3)
    return RobertaForSequenceClassification(config).eval()
