"""bitsandbytes stays out of every harness process but QLoRA-bnb's (coalora/bnb.py), and
QLoRA-bnb imports it without the kernel-hub warning. The checks read ``sys.modules`` and the
logging records, so they mean the same on a CPU with or without AVX512-BF16 (only there does
bitsandbytes print the warning at import)."""

import inspect
import logging
import subprocess
import sys
from pathlib import Path

from coalora.bnb import KERNEL_LOGGER, KERNEL_WARNING, import_bitsandbytes

REPO = Path(__file__).resolve().parents[1]

# Every module of the harness and the baselines, and the fork server's start-up; then peft,
# which every adapter export and load imports.
IMPORT_THE_HARNESS = """
import importlib, pkgutil, sys
import baselines, coalora
from coalora import forkserver

forkserver.preload()
for package in (coalora, baselines):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
import peft
print(sorted(m for m in sys.modules if m.split(".")[0] == "bitsandbytes" and sys.modules[m]))
"""

# QLoRA-bnb's path in a process where peft already answered "no bitsandbytes" (as in a fork
# server's child): its 4-bit layers get peft's 4-bit LoRA layers, and no kernel warning.
QLORA_BNB = """
import logging, sys
import torch
import coalora
from peft import LoraConfig, get_peft_model
from peft.import_utils import is_bnb_4bit_available
from baselines.qlora_bnb import load_bnb_model
from coalora.quant import quantizable_targets
sys.path.insert(0, "tests")
import tiny_models

logging.basicConfig(level=logging.INFO)  # as the command line: every warning on stderr
get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
assert sys.modules["bitsandbytes"] is None and not is_bnb_4bit_available()
model = tiny_models.tiny_llama()
names = [t.name for t in quantizable_targets(model)]
lora = get_peft_model(load_bnb_model(model, quantizable_targets(model)), LoraConfig(target_modules=names))
from peft.tuners.lora.bnb import Linear4bit
print(len(names), sum(isinstance(m, Linear4bit) for m in lora.modules()))
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_the_harness_and_the_fork_server_import_no_bitsandbytes():
    proc = run_python(IMPORT_THE_HARNESS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    assert KERNEL_WARNING not in proc.stderr


def test_qlora_bnb_imports_bitsandbytes_for_peft_without_the_kernel_warning():
    proc = run_python(QLORA_BNB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    targets, lora_4bit = proc.stdout.split()
    assert int(targets) > 0 and lora_4bit == targets
    assert KERNEL_WARNING not in proc.stderr and "kernels" not in proc.stderr


def test_exactly_bitsandbytes_kernel_warning_is_dropped(caplog):
    bnb = import_bitsandbytes()
    # The warning as bitsandbytes emits it (its source, so that a new wording fails here).
    source = inspect.getsource(bnb.backends.cpu.ops)
    assert bnb.backends.cpu.ops.__name__ == KERNEL_LOGGER
    assert "logger = logging.getLogger(__name__)" in source
    assert f'"{KERNEL_WARNING}: %s.' in source
    logger = logging.getLogger(KERNEL_LOGGER)
    with caplog.at_level(logging.WARNING, logger=KERNEL_LOGGER):
        logger.warning(f"{KERNEL_WARNING}: %s. Please ...", ModuleNotFoundError("kernels"))
        logger.warning("another warning of bitsandbytes' CPU backend")
    assert [r.getMessage() for r in caplog.records] == [
        "another warning of bitsandbytes' CPU backend"
    ]
