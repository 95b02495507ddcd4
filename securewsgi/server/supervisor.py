"""`server.workers: N`: N processes share one listening socket; this process watches them.

The supervisor binds nothing and imports no engine: the caller binds the socket once,
and each worker is forked and then starts its own engine. The supervisor only passes
signals on, restarts a worker that dies (with back-off, logged), replaces a worker
whose loop has stopped turning (`server.worker_timeout`), keeps the last good TLS
material for the workers it forks, and stops everything on SIGTERM/SIGINT.

Each worker's loop writes the time into its slot of a shared page (`Heartbeats`)
from a periodic task; the first write also says "I am serving", which is how the
supervisor knows when every worker serves (systemd's READY=1 comes from here, since
systemd listens to the main process only).

Signals are taken synchronously with `sigtimedwait` (blocked, not handled), so there is
no handler racing with the main loop; workers unblock them right after `fork()`.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger("securewsgi.supervisor")

WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
CONFIG_ERROR_EXIT = 2  # a worker that exits 2 found a configuration problem: fatal
MIN_BACKOFF, MAX_BACKOFF = 0.5, 30.0
STABLE_AFTER = 10.0  # a worker that lived this long resets the back-off
KILL_GRACE = 5.0  # beyond shutdown_timeout, before SIGKILL


class Heartbeats:
    """One double per worker slot in an anonymous shared mapping, inherited by fork:
    the CLOCK_MONOTONIC time at which the worker's loop last ran a periodic task, or
    0 while it has not started serving. Memory, unlike gunicorn's touched temp file:
    no disk writes, nothing to clean up; the monotonic clock is system-wide, so the
    supervisor can compare a worker's time with its own."""

    def __init__(self, count: int) -> None:
        self._map = mmap.mmap(-1, 8 * count)  # MAP_SHARED | MAP_ANONYMOUS

    def reset(self, slot: int) -> None:
        struct.pack_into("d", self._map, 8 * (slot - 1), 0.0)

    def beat(self, slot: int) -> None:
        struct.pack_into("d", self._map, 8 * (slot - 1), time.monotonic())

    def stopping(self, slot: int) -> None:
        """A graceful stop began: the loop may stop turning while requests drain."""
        struct.pack_into("d", self._map, 8 * (slot - 1), float("inf"))

    def last(self, slot: int) -> float:
        return struct.unpack_from("d", self._map, 8 * (slot - 1))[0]


class Heart:
    """A worker's side of its heartbeat slot."""

    def __init__(self, heartbeats: Heartbeats, slot: int) -> None:
        self._heartbeats, self._slot = heartbeats, slot
        self._stopping = False

    def beat(self) -> None:
        """Serving, and the loop turns (the first call says "serving")."""
        if not self._stopping:
            self._heartbeats.beat(self._slot)

    def stopping(self) -> None:
        """Stopping gracefully (e.g. a SIGTERM sent to this worker alone): draining
        requests is not being stuck. Final: a beat still due must not undo it."""
        self._stopping = True
        self._heartbeats.stopping(self._slot)


@dataclass
class Worker:
    slot: int
    pid: int = 0
    started: float = 0.0
    restart_at: Optional[float] = None
    backoff: float = MIN_BACKOFF
    stuck_for: Optional[float] = None  # set when the watchdog killed it


class Supervisor:
    """Keeps `count` workers running `target(heart)`, which returns the exit code and
    calls `heart.beat()` once it serves and then periodically from its loop."""

    def __init__(self, count: int, target: Callable[[Heart], int], shutdown_timeout: float,
                 on_stop: Callable[[], None] = lambda: None,
                 on_reload: Callable[[], None] = lambda: None,
                 periodic: Sequence[tuple[float, Callable[[], None]]] = (),
                 worker_timeout: float = 0.0,
                 on_ready: Callable[[], None] = lambda: None,
                 on_event: Callable[[str], None] = lambda text: None) -> None:
        self.workers = [Worker(slot) for slot in range(1, count + 1)]
        self.target = target
        self.shutdown_timeout = shutdown_timeout
        self.on_stop = on_stop
        self.on_reload = on_reload
        self.periodic = [[seconds, time.monotonic() + seconds, task]
                         for seconds, task in periodic]
        self.worker_timeout = worker_timeout
        self.on_ready = on_ready
        self.on_event = on_event
        self.heartbeats = Heartbeats(count)
        self.ready = False
        self.stop_deadline: Optional[float] = None
        self.exit_code = 0

    def run(self) -> int:
        signal.signal(signal.SIGCHLD, lambda *_: None)  # so SIGCHLD is never discarded
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        for worker in self.workers:
            self._spawn(worker)
        while True:
            info = signal.sigtimedwait(WATCHED, self._wait_seconds())
            if info is not None and info.si_signo != signal.SIGCHLD:
                self._on_signal(signal.Signals(info.si_signo))
            self._reap()
            if self.stop_deadline is None:
                self._check_ready()
                self._kill_stuck()
                self._run_periodic()
                self._restart_due()
            elif not self._alive():
                log.info("all workers stopped")
                return self.exit_code
            elif time.monotonic() > self.stop_deadline:
                self._kill_stragglers()

    def _wait_seconds(self) -> float:
        """How long the loop may sleep: short until every worker serves (READY=1
        should not lag), no longer than the shortest periodic task (WATCHDOG=1), and a
        fraction of worker_timeout so a stuck worker is replaced close to it."""
        if not self.ready:
            return 0.05
        shortest = min([0.5, *(seconds for seconds, _due, _task in self.periodic)])
        if self.worker_timeout > 0:
            return min(shortest, self.worker_timeout / 4)
        return shortest

    # ------------------------------------------------------------------- workers

    def _spawn(self, worker: Worker) -> None:
        self.heartbeats.reset(worker.slot)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for signum in WATCHED:
                    signal.signal(signum, signal.SIG_DFL)
                # SIGTERM/SIGINT/SIGHUP stay blocked until the worker has handlers for
                # them (server._EarlySignals unblocks them), so none is lost or fatal.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
                code = self.target(Heart(self.heartbeats, worker.slot))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", worker.slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        worker.pid, worker.started, worker.restart_at = pid, time.monotonic(), None
        worker.stuck_for = None
        log.info("worker %d started (pid %d)", worker.slot, pid)

    def _check_ready(self) -> None:
        """Once every worker has said it serves: `on_ready` (READY=1), once."""
        if not self.ready and all(w.pid and self.heartbeats.last(w.slot) > 0
                                  for w in self.workers):
            self.ready = True
            self.on_ready()

    def _kill_stuck(self) -> None:
        """SIGKILL a serving worker whose loop has not beaten for worker_timeout.

        SIGKILL at once, not SIGTERM first: a graceful stop needs the very loop that
        is stuck, and its in-flight requests are lost either way. Start-up (importing
        the app) is not timed: the clock starts at the worker's first beat.
        """
        if self.worker_timeout <= 0:
            return
        now = time.monotonic()
        for worker in self._alive():
            last = self.heartbeats.last(worker.slot)
            if last <= 0 or worker.stuck_for is not None or now - last <= self.worker_timeout:
                continue
            worker.stuck_for = now - last
            log.error("worker %d (pid %d) is stuck: its loop has not run for %.1fs "
                      "(server.worker_timeout %gs); killing it (SIGKILL) and starting "
                      "another", worker.slot, worker.pid, worker.stuck_for,
                      self.worker_timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            self.on_event(f"worker {worker.slot} replaced at {time.strftime('%H:%M:%S')} "
                          f"(stuck {worker.stuck_for:.0f}s)")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self.workers:
                if worker.pid == pid:
                    self._ended(worker, status)

    def _ended(self, worker: Worker, status: int) -> None:
        worker.pid = 0
        how = _describe_status(status)
        if self.stop_deadline is not None:
            log.info("worker %d stopped (%s)", worker.slot, how)
            return
        refused = os.WIFEXITED(status) and os.WEXITSTATUS(status) == CONFIG_ERROR_EXIT
        if refused and not self._alive():
            # Nobody serves and the configuration is refused: restarting cannot help.
            log.error("worker %d refused the configuration and no worker is serving; "
                      "stopping", worker.slot)
            self.exit_code = CONFIG_ERROR_EXIT
            self._begin_stop()
            return
        lived = time.monotonic() - worker.started
        worker.backoff = MIN_BACKOFF if lived > STABLE_AFTER else min(
            MAX_BACKOFF, worker.backoff * 2)
        worker.restart_at = time.monotonic() + worker.backoff
        if worker.stuck_for is not None:  # the ERROR above said why
            log.info("worker %d ended (%s); restarting in %.1fs", worker.slot, how,
                     worker.backoff)
            return
        if refused:
            # Losing one worker must never stop a service that others still serve.
            log.error("worker %d refused the configuration (see its error above); "
                      "retrying in %.1fs while %d worker(s) serve", worker.slot,
                      worker.backoff, len(self._alive()))
            return
        log.warning("worker %d died (%s) after %.1fs; restarting in %.1fs", worker.slot,
                    how, lived, worker.backoff)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.pid == 0 and worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)

    def _run_periodic(self) -> None:
        now = time.monotonic()
        for entry in self.periodic:
            seconds, due, task = entry
            if now >= due:
                entry[1] = now + seconds
                self._guarded(task)

    @staticmethod
    def _guarded(task: Callable[[], None]) -> None:
        try:
            task()
        except Exception:
            log.exception("supervisor task %s failed", getattr(task, "__qualname__", task))

    def _alive(self) -> list:
        return [w for w in self.workers if w.pid]

    # ------------------------------------------------------------------- signals

    def _on_signal(self, signum: signal.Signals) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP received: passing it to %d worker(s)", len(self._alive()))
            self._send_all(signal.SIGHUP)
            self._guarded(self.on_reload)
        elif self.stop_deadline is None:
            log.info("%s received: stopping %d worker(s)", signum.name, len(self._alive()))
            self._begin_stop()

    def _begin_stop(self) -> None:
        self.stop_deadline = time.monotonic() + self.shutdown_timeout + KILL_GRACE
        self.on_stop()  # close our copy of the listener: refuse new connections now
        self._send_all(signal.SIGTERM)

    def _send_all(self, signum: int) -> None:
        for worker in self._alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def _kill_stragglers(self) -> None:
        for worker in self._alive():
            log.error("worker %d (pid %d) did not stop in time; killing it", worker.slot,
                      worker.pid)
        self._send_all(signal.SIGKILL)
        self.stop_deadline = time.monotonic() + KILL_GRACE


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"
