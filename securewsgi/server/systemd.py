"""systemd integration without libsystemd: readiness notification and socket activation.

Both protocols are a few lines of stdlib. Readiness (`sd_notify`): datagrams such as
``READY=1`` sent to the unix socket named by ``NOTIFY_SOCKET`` (a path, or an abstract
name written with a leading ``@``). Socket activation (`sd_listen_fds`): systemd opens
the listening socket itself (so a port below 1024 needs no privilege here) and passes
it as fd 3, with ``LISTEN_FDS=1`` and ``LISTEN_PID`` set to the pid it is meant for.

With ``WatchdogSec=`` in the unit (``WATCHDOG_USEC``), ``WATCHDOG=1`` is sent from a
periodic task of the serving loop, so systemd restarts a process whose loop is stuck:
the watchdog for a single worker, which has no supervisor to replace it.

All these variables are removed from the environment as they are read, as
libsystemd does when asked to: a subprocess the application starts must neither
report on our behalf nor try to serve on our socket.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import time
from typing import Optional

from ..errors import StartupError

log = logging.getLogger("securewsgi.systemd")

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
_TLS_MODES = {"none": "plain HTTP", "server": "one-way TLS",
              "optional": "optional client certificates", "mutual": "mutual TLS"}


def describe(workers: int, tls_mode: str, engine: str) -> str:
    """The STATUS text `systemctl status` shows while serving, e.g.
    "serving 2 workers, mutual TLS, engine threads"."""
    noun = "worker" if workers == 1 else "workers"
    return f"serving {workers} {noun}, {_TLS_MODES.get(tls_mode, tls_mode)}, engine {engine}"


def clock() -> str:
    """Local wall-clock time for STATUS lines (a person compares it with their watch)."""
    return time.strftime("%H:%M:%S")


class Notifier:
    """Sends state changes to systemd; does nothing when not started by systemd.

    Sending never blocks (MSG_DONTWAIT) and never raises: a full or vanished notify
    socket must not stop the server, so a failure is logged once and then ignored.
    The socket is made when this object is, before an engine may monkey-patch the
    `socket` module, so it is always a plain one that is safe in a signal handler.
    """

    def __init__(self, address: Optional[str], status: str = "",
                 watchdog_interval: Optional[float] = None) -> None:
        self.address = _address(address) if address else None
        self.status = status  # what "serving ..." says; events are appended to it
        self.watchdog_interval = watchdog_interval if self.address else None
        self.is_ready = False
        self.is_stopping = False
        self._failed = False
        self._sock: Optional[socket.socket] = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @classmethod
    def from_environment(cls, status: str = "") -> Notifier:
        """The notifier for `NOTIFY_SOCKET` (and `WATCHDOG_USEC`), which are removed
        from the environment."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None), status, _watchdog_interval())

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, event: str = "") -> None:
        """Every worker serves (again, after a reload)."""
        self.is_ready = True
        self.send("READY=1", f"STATUS={self._status(event)}")

    def reloading(self) -> None:
        """A SIGHUP reload begins; `ready()` ends it. Before the first READY=1 a reload
        says nothing: systemd would take READY=1 after it as the start-up finishing."""
        if self.is_ready and not self.is_stopping:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}",
                      "STATUS=reloading TLS material")

    def reloaded(self, ok: bool) -> None:
        if self.is_ready and not self.is_stopping:
            self.ready(f"reloaded TLS material at {clock()}" if ok else
                       f"TLS reload at {clock()} failed, still serving the previous "
                       "material (see the log)")

    def stopping(self) -> None:
        """Shutdown began (sent once)."""
        if not self.is_stopping:
            self.is_stopping = True
            self.send("STOPPING=1", "STATUS=stopping: finishing in-flight requests")

    def watchdog(self) -> None:
        """The loop still turns (called from a periodic task of that loop)."""
        self.send("WATCHDOG=1")

    def event(self, text: str) -> None:
        """Something a person should see in `systemctl status` while serving."""
        if self.is_ready and not self.is_stopping:
            self.send(f"STATUS={self._status(text)}")

    def _status(self, event: str) -> str:
        return f"{self.status}; {event}" if event else self.status

    def send(self, *lines: str) -> None:
        if self._sock is None or self.address is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at NOTIFY_SOCKET=%s (%s); carrying on "
                            "without it", _shown(self.address), exc.strerror or exc)


def _watchdog_interval() -> Optional[float]:
    """Seconds between WATCHDOG=1: half of WatchdogSec=, as sd_watchdog_enabled(3)
    advises; None when systemd does not watch this process."""
    usec = os.environ.pop("WATCHDOG_USEC", None)
    pid = os.environ.pop("WATCHDOG_PID", None)
    if usec is None or (pid is not None and pid.strip() != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%s is not a number; not sending WATCHDOG=1", usec)
        return None
    return value / 2e6 if value > 0 else None


def _address(value: str) -> Optional[str]:
    """NOTIFY_SOCKET as a socket address: "@name" is the abstract socket "\\0name"."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%s is neither a path nor an abstract socket (@name); "
                "not notifying systemd", value)
    return None


def _shown(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


def listen_socket() -> Optional[socket.socket]:
    """The listening socket systemd passed (socket activation), or None when it passed
    none to this process. Raises StartupError when what it passed cannot be served.

    `LISTEN_PID` not naming this process means the variables were meant for another
    one (an ancestor that exec'd us without clearing them): they are ignored.
    """
    count = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if count is None or pid is None or pid.strip() != str(os.getpid()):
        return None
    try:
        n = int(count)
    except ValueError:
        raise StartupError(f"socket activation: LISTEN_FDS={count!r} is not a number") from None
    if n <= 0:
        return None
    if n > 1:
        raise StartupError(
            f"socket activation: systemd passed {n} sockets (LISTEN_FDS={n}); securewsgi "
            "serves exactly one: keep one ListenStream= in the .socket unit "
            "(ListenStream=[::]:PORT also accepts IPv4)")
    return _checked_listener(LISTEN_FDS_START)


def _checked_listener(fd: int) -> socket.socket:
    """fd as a socket, if it is a listening TCP stream socket; say clearly what it is
    otherwise (a common slip is a .socket unit with ListenDatagram= or a unix path)."""
    what = "socket activation: the socket systemd passed (fd 3)"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise StartupError(f"{what} is not open ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{what} is not a socket; securewsgi needs a listening TCP "
                           "socket (ListenStream=HOST:PORT in the .socket unit)")
    sock = socket.socket(fileno=fd)
    problem = None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        problem = f"is a {_family(sock.family)} socket, not TCP"
    elif sock.type != socket.SOCK_STREAM:
        problem = "is not a stream socket (ListenDatagram= or ListenSequentialPacket=?)"
    elif not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        problem = "is not listening (Accept=yes passes connections, not the listener)"
    if problem is not None:
        sock.detach()  # leave fd 3 to whoever owns it; we only looked
        raise StartupError(f"{what} {problem}; securewsgi needs a listening TCP socket: "
                           "ListenStream=HOST:PORT and Accept=no in the .socket unit")
    sock.setblocking(True)
    sock.set_inheritable(True)  # shared with forked workers, as a bound one is
    return sock


def _family(family: int) -> str:
    names = {socket.AF_UNIX: "unix", socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
    return names.get(family, f"family {family}")
