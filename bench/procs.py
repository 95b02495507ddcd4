"""Processes the harness starts: pinned to a CPU, bounded in time, stopped by PID.

Everything here works on PIDs the harness itself created (and their descendants,
found through /proc and remembered with their start time, so a recycled PID is
never signalled). Nothing is ever killed by name.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def pinned(cpus: str, argv: list[str]) -> list[str]:
    """`argv` run on the given CPUs (taskset execs it: the PID stays the same)."""
    return ["taskset", "-c", cpus, *argv]


# -- /proc ---------------------------------------------------------------------------

def _stat_fields(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> Optional[int]:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def children(pid: int) -> list[int]:
    """Direct children of `pid`, all threads included."""
    found: list[int] = []
    for children_file in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(p) for p in children_file.read_text().split())
        except OSError:
            continue
    return found


def tree(pid: int, limit: int = 256) -> list[int]:
    """`pid` and all its descendants (breadth first, at most `limit`)."""
    seen = [pid]
    index = 0
    while index < len(seen) and len(seen) < limit:
        seen.extend(c for c in children(seen[index]) if c not in seen)
        index += 1
    return seen


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the live processes in `pids`, plus that of their
    children already reaped (cutime, cstime: Apache replaces its child processes)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of `pids`, reaped children included, as in
    `cpu_seconds`: user time is the process's own code (Python, OpenSSL, C parsers),
    system time the kernel's work for it (TCP, epoll, file writes)."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11]) + int(fields[13])  # utime cutime
            system += int(fields[12]) + int(fields[14])  # stime cstime
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def rss_kib(pids: list[int]) -> int:
    """Resident memory of `pids` added up (VmRSS, KiB)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def cpu_list(spec: str) -> set[int]:
    """'0', '0,1', '0-3' -> CPU numbers (taskset's list syntax)."""
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def cpu_ticks() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            result[name[3:]] = [int(v) for v in values[:8]]
    return result


def cpu_shares(before: dict[str, list[int]],
               after: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Per CPU, the percentage of time spent by processes (user+system), in interrupts
    (irq+softirq: on loopback this is much of the TCP work) and stolen by the host.
    Set against a process's own CPU use it shows how much else ran on its core."""
    shares = {}
    for cpu, now in after.items():
        delta = [a - b for a, b in zip(now, before.get(cpu, now))]
        total = sum(delta)
        if total <= 0:
            continue

        def pct(*fields: int, d: list[int] = delta, t: int = total) -> float:
            return round(100 * sum(d[i] for i in fields) / t, 1)

        shares[cpu] = {"process": pct(0, 1, 2), "interrupt": pct(5, 6), "steal": pct(7)}
    return shares


# -- one-shot commands ---------------------------------------------------------------

@dataclass
class Finished:
    """A bounded command's outcome, with the CPU time it used itself."""

    returncode: Optional[int]
    stdout: str
    stderr: str
    wall_seconds: float
    cpu_seconds: float
    timed_out: bool


def run_bounded(argv: list[str], timeout: float, workdir: Path, name: str,
                cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None) -> Finished:
    """Run `argv` to completion or kill it (by PID) after `timeout` seconds.

    Output goes to files (ab can print megabytes of per-connection errors to stderr,
    a pipe would fill up); CPU time comes from wait4(), so the load generator's own
    CPU use can be reported next to the server's.
    """
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)
    status = _wait4_with_deadline(proc, timeout)
    wall = time.monotonic() - started
    returncode = None if status is None else _exit_code(status[0])
    proc.returncode = returncode if returncode is not None else -9
    cpu = status[1].ru_utime + status[1].ru_stime if status else 0.0
    return Finished(returncode, _read_tail(out_path), _read_tail(err_path, 20000), wall, cpu,
                    status is None)


def _wait4_with_deadline(proc: subprocess.Popen, timeout: float) -> Optional[tuple[int, Any]]:
    """Reap `proc` with wait4() (for its rusage); SIGKILL it if `timeout` passes."""
    result: list[tuple[int, Any]] = []

    def reap() -> None:
        _pid, status, usage = os.wait4(proc.pid, 0)
        result.append((status, usage))

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    try:
        reaper.join(timeout)
    except BaseException:  # Ctrl-C: do not leave the load generator running
        _kill(proc.pid, signal.SIGKILL)
        raise
    if reaper.is_alive():
        _kill(proc.pid, signal.SIGKILL)
        reaper.join(10)
        return None
    return result[0]


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else (
        status >> 8)


def _read_tail(path: Path, limit: int = 200000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace")


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# -- long-running processes ----------------------------------------------------------

class Process:
    """A server (or an interactive load generator) the harness started and must stop."""

    def __init__(self, argv: list[str], workdir: Path, name: str,
                 cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None,
                 interactive: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE if interactive else out, stderr=err, cwd=cwd,
                env=env, stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                start_new_session=True)
        self.pid = self.proc.pid
        self._known: dict[int, Optional[int]] = {self.pid: start_time(self.pid)}

    # observing
    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The live process tree, remembered so `stop()` can reach every member."""
        members = tree(self.pid) if self.alive() else []
        for pid in members:
            self._known.setdefault(pid, start_time(pid))
        return members

    def rss_kib(self) -> int:
        return rss_kib(self.pids())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def cpu_split(self) -> tuple[float, float]:
        return cpu_split(self.pids())

    def stderr_text(self) -> str:
        try:
            return _read_tail(self.stderr_path, 20000)
        except OSError:
            return ""

    def last_error_line(self) -> str:
        """The last meaningful stderr line: why a server refused to start."""
        lines = [line.strip() for line in self.stderr_text().splitlines() if line.strip()]
        return lines[-1][:300] if lines else f"exited with status {self.proc.returncode}"

    # talking (interactive processes)
    def read_line(self, timeout: float) -> Optional[str]:
        """One stdout line, or None when `timeout` passes or the process ends first."""
        stream: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stream], [], [], min(0.5, deadline - time.monotonic()))
            if ready:
                line = stream.readline()
                return line.decode("utf-8", "replace") if line else None
        return None

    def write_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    # stopping
    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM, wait up to `grace` s, then SIGKILL the process and any descendant
        still alive (each by PID, checked against its recorded start time)."""
        self.pids()
        if self.alive():
            _kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid, started in self._known.items():
            if pid != self.pid and started is not None and start_time(pid) == started:
                _kill(pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        return self.proc.returncode


class Group:
    """A target's processes: the one clients connect to and those started before it
    (uWSGI behind nginx). Measured as one (CPU time and RSS added up), stopped front
    first."""

    def __init__(self, main: Process, helpers: list[Process]) -> None:
        self.main = main
        self.helpers = helpers
        self.pid = main.pid

    @property
    def members(self) -> list[Process]:
        return [self.main, *self.helpers]

    def alive(self) -> bool:
        return all(p.alive() for p in self.members)

    def pids(self) -> list[int]:
        return [pid for p in self.members for pid in p.pids()]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def cpu_split(self) -> tuple[float, float]:
        return cpu_split(self.pids())

    def rss_kib(self) -> int:
        return rss_kib(self.pids())

    def last_error_line(self) -> str:
        dead = [p for p in self.members if not p.alive()]
        return (dead[0] if dead else self.main).last_error_line()

    def stop(self, grace: float = 10.0) -> Optional[int]:
        code = self.main.stop(grace)
        for helper in self.helpers:
            helper.stop(grace)
        return code
