"""Baselines on the shared training engine; importing this package registers them."""

from . import qlora, shared_lora  # noqa: F401
