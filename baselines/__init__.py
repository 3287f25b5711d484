"""Baselines on the shared training engine; importing this package registers them."""

from . import full_ft, gptq_lora, loftq, lqlora, qlora, qlora_bnb, shared_lora  # noqa: F401
