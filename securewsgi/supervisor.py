"""`server.workers: N`: N processes share one listening socket; this process watches them.

The supervisor binds nothing and imports no engine: the caller binds the socket once,
and each worker is forked and then starts its own engine. The supervisor only passes
signals on, restarts a worker that dies (with back-off, logged), keeps the last good
TLS material for the workers it forks, and stops everything on SIGTERM/SIGINT.

Signals are taken synchronously with `sigtimedwait` (blocked, not handled), so there is
no handler racing with the main loop; workers unblock them right after `fork()`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
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


@dataclass
class Worker:
    slot: int
    pid: int = 0
    started: float = 0.0
    restart_at: Optional[float] = None
    backoff: float = MIN_BACKOFF


class Supervisor:
    """Keeps `count` workers running `target()` (which returns the exit code)."""

    def __init__(self, count: int, target: Callable[[], int], shutdown_timeout: float,
                 on_stop: Callable[[], None] = lambda: None,
                 on_reload: Callable[[], None] = lambda: None,
                 periodic: Sequence[tuple[float, Callable[[], None]]] = ()) -> None:
        self.workers = [Worker(slot) for slot in range(1, count + 1)]
        self.target = target
        self.shutdown_timeout = shutdown_timeout
        self.on_stop = on_stop
        self.on_reload = on_reload
        self.periodic = [[seconds, time.monotonic() + seconds, task]
                         for seconds, task in periodic]
        self.stop_deadline: Optional[float] = None
        self.exit_code = 0

    def run(self) -> int:
        signal.signal(signal.SIGCHLD, lambda *_: None)  # so SIGCHLD is never discarded
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        for worker in self.workers:
            self._spawn(worker)
        while True:
            info = signal.sigtimedwait(WATCHED, 0.5)
            if info is not None and info.si_signo != signal.SIGCHLD:
                self._on_signal(signal.Signals(info.si_signo))
            self._reap()
            if self.stop_deadline is None:
                self._run_periodic()
                self._restart_due()
            elif not self._alive():
                log.info("all workers stopped")
                return self.exit_code
            elif time.monotonic() > self.stop_deadline:
                self._kill_stragglers()

    # ------------------------------------------------------------------- workers

    def _spawn(self, worker: Worker) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for signum in WATCHED:
                    signal.signal(signum, signal.SIG_DFL)
                # SIGTERM/SIGINT/SIGHUP stay blocked until the worker has handlers for
                # them (server._EarlySignals unblocks them), so none is lost or fatal.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
                code = self.target()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", worker.slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        worker.pid, worker.started, worker.restart_at = pid, time.monotonic(), None
        log.info("worker %d started (pid %d)", worker.slot, pid)

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
