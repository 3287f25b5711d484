"""Working without a network: where installed packages keep their files, and whether the Hugging
Face hub can be used now.

Shared by ``coalora.models`` and ``coalora.data`` (both re-use packaged files and fall back to
the hub only when it is reachable).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

# A directory laid out like the hub (<dir>/<owner>/<name>/ holds that repository's files, as
# `huggingface-cli download REPO --local-dir <dir>/REPO` writes them): every hub model, data
# set and lm-eval task data set found there is read from there, never from the hub.
HUB_MIRROR_ENV = "COALORA_HUB_MIRROR"


class HubUnavailableError(OSError):
    """A hub model or data set was asked for while the hub is offline or unreachable."""


def package_dir(module: str, distribution: str) -> Path:
    """Directory of an installed package, found without importing it (imports may have deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {distribution} is not installed: pip install --no-deps {distribution}"
        )
    return Path(list(spec.submodule_search_locations)[0])


_TRUE = {"1", "true", "yes", "on"}


def _env_offline() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint; cached for the process.

    Without it, huggingface_hub retries a missing network for ~25 s before failing.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the DNS lookup too, which socket timeouts do not cover.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def hub_mirror(repo_id: str) -> Path | None:
    """The local copy of hub repository ``repo_id`` in ``$COALORA_HUB_MIRROR``, or None."""
    root = os.environ.get(HUB_MIRROR_ENV)
    if not root or not repo_id or repo_id.startswith((".", "/", "~")):
        return None
    path = Path(root).expanduser() / repo_id
    return path if path.is_dir() else None


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now, or None when it can."""
    reason = _env_offline()
    if reason:
        return reason
    if not _hub_reachable():
        return "the hub is unreachable from this machine"
    return None


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Make ``datasets`` and ``huggingface_hub`` use local files only (both read the env flag
    once, at import, so the flag alone is not enough once they are imported)."""
    import datasets  # lazy: datasets costs about a second to import; only hub tasks use it
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
