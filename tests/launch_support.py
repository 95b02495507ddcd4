"""Helpers for tests that start securewsgi the way systemd or an init script does: with
a NOTIFY_SOCKET to report to, an inherited listening socket, or extra arguments.

`NotifySocket` is the receiving end of systemd's notify protocol (a unix datagram
socket the test binds and reads); `LaunchedServer` is a `ServerProcess` started from a
given command line, optionally with inherited fds, without waiting for it to listen.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from support import ServerProcess, wait_for

LISTENING = re.compile(r"listening on (https?)://(\[[^\]]+\]|[^:\s]+):(\d+)")

# Becomes what systemd starts after socket activation: the socket (argv[1]) as fd 3,
# LISTEN_FDS=1 and LISTEN_PID = this very pid (execv keeps it), then securewsgi.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class NotifySocket:
    """Where the server's sd_notify datagrams arrive: a path or an abstract "@name"."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        """The next datagram as {"READY": "1", "STATUS": "..."}; fail after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"no notification within {timeout}s") from None
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def pending(self) -> list[dict[str, str]]:
        """Every datagram already received, without waiting."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        except BlockingIOError:
            return messages
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class LaunchedServer(ServerProcess):
    """A `ServerProcess` started from `argv` (default: `python -m securewsgi --config
    FILE`), with `pass_fds` inherited; `wait_listening()` waits for the start-up line."""

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "securewsgi", "--config", str(self.config_path), *extra]

    def launch(self, argv: Optional[list[str]] = None, pass_fds: tuple = ()) -> LaunchedServer:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv or self.command(), stdout=out, stderr=err,
                                         env=self.env, cwd=str(self.dir), pass_fds=pass_fds)
        return self

    def wait_listening(self, timeout: float = 20.0) -> re.Match:
        def listening() -> Optional[re.Match]:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                     f"{self.stderr}")
            return LISTENING.search(self.stderr)

        match = wait_for(listening, timeout, what="the server's 'listening on' line")
        self.scheme, self.host, self.port = match.group(1), match.group(2).strip("[]"), int(
            match.group(3))
        return match

    def exit_code(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def short_socket_path(directory: Path, name: str) -> str:
    """A unix socket path under the 108-byte limit, even in a deep pytest directory."""
    path = str(directory / name)
    if len(path) < 100:
        return path
    return f"/tmp/sw-{os.getpid()}-{name}"
