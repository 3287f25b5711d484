"""The caller's side of the fork server (coalora.forkserver says what it is and when a call
is served): ``coalora.cli.main`` hands its call over here first.

Only the standard library is imported here: every ``coalora`` call imports this, and a call
that is served must cost nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "COALORA_FORKSERVER"  # the server's Unix socket, set by forkserver.start

# Length of the JSON request that follows the file descriptors (0, 1, 2) on the socket.
REQUEST_HEADER = struct.Struct("!I")


def call(argv: list[str]) -> int | None:
    """Run ``coalora <argv>`` in a child of the server named by ``$COALORA_FORKSERVER``
    and return its exit status, or None when there is no server or it declines the call
    (the caller then runs the command itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        conn.connect(path)
        request = json.dumps(
            {
                "argv": list(argv),
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "executable": sys.executable,
                "path": sys.path,
            }
        ).encode()
        socket.send_fds(conn, [REQUEST_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        conn.settimeout(None)
        replies = conn.makefile("r", encoding="utf-8")
        first = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if "pid" not in first:  # declined (first["declined"] says why) or the server went away
        conn.close()
        return None
    child = first["pid"]
    passed_on: list[int] = []

    def pass_on(signum, _frame):
        passed_on.append(signum)
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, pass_on)
    last = replies.readline()
    conn.close()
    if not last:
        if passed_on:  # ended by the signal it was passed, as a cold process would be
            return 128 + passed_on[-1]
        print(
            f"coalora: error: the command's process (pid {child}) ended without an exit "
            "status (killed?)",
            file=sys.stderr,
        )
        return 137
    return int(json.loads(last)["rc"])
