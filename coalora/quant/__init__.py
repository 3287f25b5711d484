"""Quantization: the paper's NF-k / INT-k double-quantized format, configurations, allocation.

Knows nothing about LoRA or search.
"""

from .apply import QuantizedBase, apply_qconfig
from .blockwise import QuantizedTensor, dequantize, quantize, quantize_dequantize
from .codebooks import QUANTIZERS, codebook, nf_codebook
from .config import ALL_OPTIONS, FIELD_CHOICES, FIELDS, MAX_BITS, MIN_BITS, QuantConfig
from .model_config import ModelQConfig, average_bits
from .targets import MODULE_TYPES, QuantTarget, quantizable_targets

__all__ = [
    "ALL_OPTIONS",
    "FIELDS",
    "FIELD_CHOICES",
    "MAX_BITS",
    "MIN_BITS",
    "MODULE_TYPES",
    "QUANTIZERS",
    "ModelQConfig",
    "QuantConfig",
    "QuantTarget",
    "QuantizedBase",
    "QuantizedTensor",
    "apply_qconfig",
    "average_bits",
    "codebook",
    "dequantize",
    "nf_codebook",
    "quantizable_targets",
    "quantize",
    "quantize_dequantize",
]
