"""Test-wide settings: offline, one torch thread, coalora's caches in a temporary directory.

One thread: the models in the tests are tiny, so a second thread buys little, and on a busy
machine torch's parallel regions can stall for milliseconds per operation. It also keeps the
numbers independent of the machine's core count.

The caches (``coalora.io.cache_root``: tokenizers, cost tables, ILP solutions) live in one
temporary directory per test session, shared by its tests and the processes they start
(snakemake's jobs, the fork server): the suite builds them once, and writes nothing under
``~/.cache/coalora`` (checked at the end: ``home_cache_untouched``). It is set before any
test module is imported (some copy ``os.environ`` then) and over a ``$COALORA_CACHE`` of the
caller's: entries of an earlier version there would hide a bug in building them. A module
that must build its own (tests/test_models.py) sets a private one.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from coalora.io import CACHE_ENV, DEFAULT_CACHE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
SESSION_CACHE = tempfile.mkdtemp(prefix="coalora-test-cache-")
os.environ[CACHE_ENV] = SESSION_CACHE

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip where no CUDA GPU is (``pytest -m cuda`` selects them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


def tree_state(root: Path) -> list[tuple[str, int, int]] | None:
    """Every entry under ``root`` with its modification time and size (None: no ``root``)."""
    if not root.exists():
        return None
    state = []
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(folder, name)
            info = path.lstat()
            state.append((str(path.relative_to(root)), info.st_mtime_ns, info.st_size))
    return sorted(state)


@pytest.fixture(scope="session", autouse=True)
def home_cache_untouched():
    """Fails the session's last test when the tests created or changed ~/.cache/coalora."""
    home = Path(DEFAULT_CACHE).expanduser()
    before = tree_state(home)
    yield
    assert tree_state(home) == before, (
        f"the tests wrote into {home}: they must use ${CACHE_ENV} ({SESSION_CACHE} or a "
        "test's own); or another process wrote there meanwhile"
    )
