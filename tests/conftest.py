"""Test-wide settings: offline, one torch thread.

One thread: the models in the tests are tiny, so a second thread buys little, and on a busy
machine torch's parallel regions can stall for milliseconds per operation. It also keeps the
numbers independent of the machine's core count.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
