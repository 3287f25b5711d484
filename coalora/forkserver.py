"""A warm start for the ``coalora`` command: import torch, transformers and peft once per
workflow run, not once per job.

Importing them costs 7-9 s per process on a 2-core CPU machine, more than many jobs' own
work (``benchmarks/setup_cost.py``). The workflow (``Snakefile``'s ``onstart``) therefore
starts one server per local run: it imports everything the sub-commands use, then waits on
a Unix socket. A ``coalora`` call that finds ``$COALORA_FORKSERVER`` connects, hands over
its standard input, output and error, and the server forks a child that runs
``coalora.cli.main`` with the call's arguments, working directory and environment. The
call waits and exits with the child's status. Nothing else changes: the same function runs
with the same arguments, threads and environment, so the numbers are the same (the tests
compare whole runs with and without the server).

When the server cannot serve a call exactly as a fresh process would, the call runs in its
own process as before (a "cold" start):

- no ``$COALORA_FORKSERVER``, or nothing listens there (e.g. a SLURM job on another node:
  the workflow starts no server for non-local executors, so cluster jobs keep their own
  processes and accounting);
- another interpreter or ``sys.path`` beyond its first entry (e.g. a conda environment);
- an environment variable that differs from the server's, except those read after
  start-up (:data:`LATE_READ`: the thread counts Snakemake sets per job, which the child
  applies with ``torch.set_num_threads``; the temporary directory, which it re-reads).

The child ends when its caller does: Ctrl-C or SIGTERM to the caller is passed on, and a
caller that is killed outright closes the socket, which the child watches. The server ends
when the process that started it is gone, when its socket is removed, or on SIGTERM. Its
socket's directory is named with that process's pid: a start removes those a hard kill left
behind (:func:`remove_stale_dirs`).

The caller's side is coalora.forkclient (which coalora.cli imports); this module, the
server's, imports coalora.cli in the child. Only the standard library is imported at the top
of both: the workflow's process and every caller import them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time

from .forkclient import REQUEST_HEADER, SOCKET_ENV

# Environment variables a child may have that differ from the server's: read only after
# start-up (or applied by the child itself), so a fork serves them as a fresh process would.
LATE_READ = frozenset(
    {
        # Per-job thread counts (Snakemake sets them from `threads:`): applied by the child.
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "GOTO_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        # The temporary directory (Snakemake's `resources: tmpdir`): tempfile re-reads it.
        "TMPDIR",
        "TEMP",
        "TMP",
        "TEMPDIR",
        # Read when a mark is written (coalora.timing); where the server is (set after it).
        "COALORA_TIMING_FILE",
        SOCKET_ENV,
        # The terminal's size: read when text is wrapped (shutil.get_terminal_size).
        "COLUMNS",
        "LINES",
        # Set by shells, read by nothing here. The prompts: a non-interactive bash (which runs
        # every Snakemake job) unsets PS1 and PS2 and resets PS4, so a run started from a
        # shell with an activated virtual environment (which exports PS1) would serve nothing.
        "_",
        "OLDPWD",
        "PWD",
        "SHLVL",
        "PS1",
        "PS2",
        "PS4",
    }
)

# What the sub-commands import (coalora.cli imports each inside its handler); lm-eval and
# the GPTQ toolkit are left out: few jobs use them and they cost seconds and memory.
PRELOAD = (
    "coalora.models",  # first: it keeps transformers from importing scikit-learn
    "peft",
    "coalora.runner",
    "coalora.evaluate.run",
    "coalora.report.cli",
    "transformers.models.bert.modeling_bert",
    "transformers.models.llama.modeling_llama",
)

# The socket directories under $TMPDIR: coalora-fs-<pid of the server's parent>-<random>.
DIR_PREFIX = "coalora-fs-"


# --- the server's side ------------------------------------------------------------------


def why_not_served(request: dict) -> str | None:
    """Why a fork of this process would not run the request as a fresh process would
    (None: it would)."""
    if request["executable"] != sys.executable:
        return f"another interpreter ({request['executable']})"
    # sys.path[0] is the script's directory, or the working directory under `python -m`:
    # the child takes the caller's (below); the rest must be the same.
    if request["path"][1:] != sys.path[1:]:
        return "another sys.path"
    env = request["env"]
    for name in sorted(set(env) | set(_START_ENV)):
        if name not in LATE_READ and env.get(name) != _START_ENV.get(name):
            return f"environment variable {name} differs"
    return None


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the caller closed the connection")
        data += chunk
    return data


def _exit_when_caller_gone(conn: socket.socket) -> None:
    """The caller sends nothing after its request: end of file means it is gone."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os._exit(137)


def _serve_child(conn: socket.socket) -> None:
    """In the forked child: become the caller's command, run it, report its status."""
    header, fds, _, _ = socket.recv_fds(conn, REQUEST_HEADER.size, 3)
    if len(header) < REQUEST_HEADER.size:
        header += _recv_exactly(conn, REQUEST_HEADER.size - len(header))
    request = json.loads(_recv_exactly(conn, REQUEST_HEADER.unpack(header)[0]))
    reason = why_not_served(request) if len(fds) == 3 else "no standard streams passed"
    if reason:
        print(f"declined: {reason}: coalora {' '.join(request['argv'])}", flush=True)
        conn.sendall((json.dumps({"declined": reason}) + "\n").encode())
        return
    print(f"served (pid {os.getpid()}): coalora {' '.join(request['argv'])}", flush=True)
    conn.sendall((json.dumps({"pid": os.getpid()}) + "\n").encode())
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.update(_SET_BY_IMPORTS)
    _apply_late_settings()
    threading.Thread(target=_exit_when_caller_gone, args=(conn,), daemon=True).start()
    sys.argv = ["coalora", *request["argv"]]
    sys.path[:] = request["path"]
    rc = _run_cli(request["argv"])
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall((json.dumps({"rc": rc}) + "\n").encode())


def _apply_late_settings() -> None:
    """What a fresh process reads from its environment at start-up and the server read
    from its own: the temporary directory and torch's thread count."""
    import tempfile

    import torch

    tempfile.tempdir = None
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads and threads.isdigit() else _DEFAULT_THREADS)


def _run_cli(argv: list[str]) -> int:
    from coalora.cli import run_here

    try:
        return int(run_here(argv) or 0)
    except SystemExit as stop:  # argparse's errors and --help
        code = stop.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # as an uncaught exception in a fresh interpreter: trace, status 1
        import traceback

        traceback.print_exc()
        return 1


# This process's environment as it started (what a caller's must match), and what the
# imports of PRELOAD then set in it (e.g. KMP_DUPLICATE_LIB_OK), which a child sets again.
_START_ENV = dict(os.environ)
_SET_BY_IMPORTS: dict[str, str] = {}
_DEFAULT_THREADS = 1  # set by serve(): the thread count this process chose at start-up


def preload() -> None:
    """What the server does once for all its children: import :data:`PRELOAD`, read the
    methods' entry points and parse the embedded corpus."""
    from coalora.bnb import import_peft

    for module in PRELOAD:
        if module == "peft":
            import_peft()  # without bitsandbytes, which only QLoRA-bnb's jobs use (coalora/bnb.py)
        else:
            importlib.import_module(module)
    from coalora.methods import registered_methods

    registered_methods()  # the entry points, read once
    from coalora.data import bible_verses

    bible_verses()  # the embedded corpus, parsed once (0.5-0.7 s per job that reads it)


def serve(path: str, parent: int | None = None) -> None:
    """Import :data:`PRELOAD`, listen on ``path`` and fork a child per call, until
    ``parent`` (a pid) is gone, the socket is removed, or SIGTERM."""
    global _DEFAULT_THREADS
    started = time.monotonic()
    preload()
    import torch

    _DEFAULT_THREADS = torch.get_num_threads()
    _SET_BY_IMPORTS.update(
        {k: v for k, v in os.environ.items() if _START_ENV.get(k) != v and k not in LATE_READ}
    )

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}.tmp"
    listener.bind(staging)
    listener.listen(64)
    os.replace(staging, path)  # callers only ever find a socket that is listening
    listener.settimeout(1.0)
    print(f"ready: imported in {time.monotonic() - started:.1f} s; listening on {path}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while (parent is None or os.getppid() == parent) and os.path.exists(path):
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                _reap()
                continue
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                try:
                    conn.settimeout(None)
                    _serve_child(conn)
                finally:
                    os._exit(0)
            conn.close()
            _reap()
    finally:
        listener.close()
        if os.path.exists(path):
            os.unlink(path)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --- starting and stopping (the workflow's onstart / onsuccess / onerror) ---------------


def start(log: str):
    """Start a server for this process's children and set ``$COALORA_FORKSERVER`` so that
    the commands started from here on use it; returns ``(process, socket path)``. It does
    not wait: until the server has imported everything and listens (about 10 s), commands
    find no socket and start cold. The server writes a line per call it serves or declines
    to ``log``."""
    import subprocess
    import tempfile

    remove_stale_dirs()
    # A Unix socket's path holds at most 107 bytes: a short directory of its own, named with
    # the pid of the process the server serves (and ends with).
    path = os.path.join(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"), "server.sock")
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "coalora.forkserver", path, "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    os.environ[SOCKET_ENV] = path
    return process, path, log


def remove_stale_dirs() -> list[str]:
    """Remove the socket directories of :func:`start` (``$TMPDIR/coalora-fs-<pid>-*``) that
    a hard kill left behind: this user's, whose pid is gone (its server ends with it). Those
    of a live process, other users' and names without a pid are kept. Returns the removed."""
    import re
    import shutil
    import stat
    import tempfile

    owner_pid = re.compile(re.escape(DIR_PREFIX) + r"(\d+)-")
    removed = []
    with os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            match = owner_pid.match(entry.name)
            if not match or _alive(int(match[1])):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # another server's start removed it meanwhile
                continue
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                shutil.rmtree(entry.path, ignore_errors=True)  # a concurrent start may too
                removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def stop(process, path: str, log: str) -> None:
    """Stop a server from :func:`start` and remove its socket."""
    os.environ.pop(SOCKET_ENV, None)
    if process.poll() is not None:  # it ended by itself: every command after that ran cold
        print(
            f"coalora: warning: the fork server ended early (status {process.returncode}); "
            f"its log: {log}",
            file=sys.stderr,
        )
    else:
        process.terminate()
        try:
            process.wait(timeout=10)
        except Exception:
            process.kill()
    if os.path.exists(path):
        os.unlink(path)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m coalora.forkserver", description=__doc__)
    parser.add_argument("socket", help="path of the Unix socket to listen on")
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    args = parser.parse_args()
    serve(args.socket, args.parent)


if __name__ == "__main__":
    _main()
