"""The fork server (coalora.forkserver): a command it serves prints, writes and exits as the
same command run cold; a call it cannot serve exactly runs cold; a served command ends
when its caller does."""

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from coalora import forkserver

COALORA = [sys.executable, "-m", "coalora.cli"]
PYTEST_VARIABLE = "PYTEST_CURRENT_TEST"
PROMPTS = {"PS1": "(.venv) $ ", "PS2": "> ", "PS4": "++ "}


def caller_env(server_path=None, **env):
    full = {
        k: v for k, v in os.environ.items() if k not in (forkserver.SOCKET_ENV, PYTEST_VARIABLE)
    }
    if server_path:
        full[forkserver.SOCKET_ENV] = server_path
    return {**full, **env}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("fs") / "fork_server.log"
    # pytest names the running test in the environment: the server and its callers leave
    # that variable out (it differs from test to test, and the server declines a change).
    current = os.environ.pop(PYTEST_VARIABLE, None)
    # Exported prompts, as in a shell with an activated virtual environment: the jobs' bash
    # drops them (test_a_call_through_a_non_interactive_shell_is_served).
    prompts = {name: os.environ.get(name) for name in PROMPTS}
    os.environ.update(PROMPTS)
    try:
        process, path, _ = forkserver.start(log=str(log))
    finally:
        if current is not None:
            os.environ[PYTEST_VARIABLE] = current
        for name, value in prompts.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(path):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not listen in 3 minutes"
            time.sleep(0.1)
        yield path, log
    finally:
        forkserver.stop(process, path, str(log))
    assert not os.path.exists(path)
    assert forkserver.SOCKET_ENV not in os.environ


def run(args, server_path=None, **env):
    return subprocess.run(
        [*COALORA, *args], capture_output=True, text=True, env=caller_env(server_path, **env)
    )


def served_lines(log):
    return [line for line in log.read_text().splitlines() if line.startswith("served")]


def test_a_served_command_prints_and_exits_as_a_cold_one(server, tmp_path):
    path, log = server
    before = len(served_lines(log))
    warm, cold = run(["methods", "--json"], path), run(["methods", "--json"])
    assert warm.returncode == cold.returncode == 0
    assert warm.stdout == cold.stdout and '"coalora"' in warm.stdout
    assert len(served_lines(log)) == before + 1  # it did go through the server

    # Its errors too: the one-line message on stderr, status 2, nothing written.
    out = tmp_path / "p.json"
    args = ["prepare", "--model", "no-such-model", "--task", "bible-testament", "--out", str(out)]
    warm, cold = run(args, path), run(args)
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr.strip() == cold.stderr.strip()
    assert warm.stderr.startswith("coalora: error: model 'no-such-model'")
    assert not out.exists()
    # argparse's own exit (a missing argument): status 2 and its usage line.
    warm = run(["train", "--model", "tiny-bert"], path)
    assert warm.returncode == 2 and "the following arguments are required" in warm.stderr


def test_a_served_command_works_in_the_callers_directory_with_its_threads(server, tmp_path):
    path, log = server
    out = "prepared.json"  # relative: the caller's working directory, not the server's
    args = ["prepare", "--model", "tiny-bert", "--task", "bible-testament", "--out", out]
    full_env = caller_env(path, OMP_NUM_THREADS="1")
    proc = subprocess.run([*COALORA, *args], capture_output=True, text=True, env=full_env,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / out).exists() and "wrote prepared.json" in proc.stdout
    assert served_lines(log)[-1].endswith(" ".join(args))


def test_a_call_through_a_non_interactive_shell_is_served(server):
    """Snakemake runs each job's command with ``bash -c``, which unsets PS1 and PS2 and resets
    PS4: a server started with exported prompts serves those jobs all the same."""
    path, log = server
    env = caller_env(path, **PROMPTS)
    command = " ".join(shlex.quote(part) for part in [*COALORA, "models"])
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "tiny-bert" in proc.stdout, proc.stderr
    last = log.read_text().splitlines()[-1]
    assert last.startswith("served") and last.endswith(" models"), last


def test_a_call_with_another_environment_runs_cold(server):
    path, log = server
    proc = run(["models"], path, HF_HOME="/nonexistent-elsewhere")
    assert proc.returncode == 0 and "tiny-bert" in proc.stdout
    assert (
        log.read_text()
        .splitlines()[-1]
        .startswith("declined: environment variable HF_HOME differs")
    )
    # Nothing listening at the named path: cold too.
    proc = run(["models"], path + ".gone")
    assert proc.returncode == 0 and "tiny-bert" in proc.stdout


def long_training(path, tmp_path):
    args = ["train", "--model", "tiny-bert", "--task", "bible-testament", "--method", "qlora"]
    args += ["--steps", "100000", "--budget", "4", "--out", str(tmp_path / "ckpt")]
    return subprocess.Popen(
        [*COALORA, *args], env=caller_env(path), stderr=subprocess.PIPE, text=True
    )


def served_pid(log, count_before, timeout=60):
    deadline = time.monotonic() + timeout
    while len(served_lines(log)) == count_before:
        assert time.monotonic() < deadline, "the call was not served"
        time.sleep(0.1)
    return int(served_lines(log)[-1].split("pid ")[1].split(")")[0])


def gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_served_command_ends_with_its_caller(server, tmp_path, how):
    """SIGTERM to the caller is passed on; a caller killed outright (SIGKILL, as the OOM
    killer or a killed workflow would) closes the socket, which the served child watches."""
    path, log = server
    count = len(served_lines(log))
    caller = long_training(path, tmp_path)
    child = served_pid(log, count)
    time.sleep(1.0)
    caller.send_signal(getattr(signal, how))
    status = caller.wait(timeout=30)
    assert gone(child), f"the served child {child} outlived its caller"
    if how == "SIGTERM":
        assert status == 128 + signal.SIGTERM
    assert not (tmp_path / "ckpt").exists()


def socket_dir(root, pid, suffix="x"):
    path = root / f"{forkserver.DIR_PREFIX}{pid}-{suffix}"
    path.mkdir()
    (path / "server.sock").write_text("")
    return path


def test_a_start_removes_the_socket_dirs_of_gone_processes_only(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its pid is now gone
    stale = socket_dir(tmp_path, ended.pid)
    live = socket_dir(tmp_path, os.getpid())
    (tmp_path / f"{forkserver.DIR_PREFIX}unnamed").mkdir()  # no pid: whose it is is unknown
    (tmp_path / f"{forkserver.DIR_PREFIX}{ended.pid}-file").write_text("")  # not a directory
    kept = sorted(p.name for p in tmp_path.iterdir() if p != stale)
    # Another user's: kept even when its process is gone.
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)
    assert forkserver.remove_stale_dirs() == [] and stale.exists()
    monkeypatch.setattr(os, "getuid", lambda: real_uid)
    assert forkserver.remove_stale_dirs() == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept and live.exists()
    # start() removes them before it makes its own (named with its pid).
    again = socket_dir(tmp_path, ended.pid, "y")
    process, path, log = forkserver.start(log=str(tmp_path / "fork_server.log"))
    try:
        assert not again.exists()
        assert Path(path).parent.name.startswith(f"{forkserver.DIR_PREFIX}{os.getpid()}-")
    finally:
        forkserver.stop(process, path, log)
    assert not Path(path).parent.exists()


def test_the_command_imports_only_the_callers_side():
    # coalora.cli -> coalora.forkclient; coalora.forkserver -> coalora.cli (in the child):
    # no cycle, and a call pays for neither the server nor torch before it is handed over.
    code = "import sys, coalora.cli; print(sorted(m for m in sys.modules if 'fork' in m or m == 'torch'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['coalora.forkclient']"]
