"""`python -m bench`: run every target, write bench/results/<timestamp>.json, render
docs/source/benchmarks.rst and docs/source/benchmarks.png.

Order of work (repetitions are interleaved across targets, so slow drift on a shared
machine spreads over all targets instead of biasing one: running one target's three
repetitions back to back once put a passing load spike on a single target):

1. make a test PKI with ``securewsgi-certs init`` in a temporary directory;
2. for each repetition, for each target: start it pinned to the server CPU, check it
   answers ``hello, world`` and refuses a client without a certificate, warm up, then
   keep-alive throughput, new-connection throughput, silent connections; stop it;
3. the fixed offered rate: a share (50%) of the slowest target's keep-alive capacity
   (medians of step 2); for each repetition, each target, on a fresh server: latency
   and server CPU per request at that rate;
4. the blocking-app test (securewsgi's engines, an app sleeping 0.2 s per request);
5. CPU profiles of securewsgi under keep-alive and new-connection load (py-spy),
   and every target's CPU by component (OpenSSL, C library, Python, its own code,
   kernel) under the same loads (perf);
6. idle capacity: for each N, each repetition, each target, on a fresh server;
7. results file and page.

A target that is not installed is skipped with the command that installs it; one
that does not start is reported as "not available: <its own last stderr line>" and
the run carries on.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import platform
import re
import shlex
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Optional

from . import loadgen, measure, procs, report, wrk
from .install import run_setup
from .targets import BENCH_DIR, REPO_DIR, Env, Target, by_name, parse_override

RESULTS_DIR = BENCH_DIR / "results"
DOCS_PAGE = REPO_DIR / "docs" / "source" / "benchmarks.rst"
DOCS_CHART = REPO_DIR / "docs" / "source" / "benchmarks.png"
START_TIMEOUT = 30.0
QUICK_PROFILE_SECONDS = 3.0  # --quick --profile

QUICK_PLAN = measure.Plan(duration=2.0, warmup=1.0, repeat=1, idle_counts=(200,),
                          fresh_samples=3, fresh_timeout=2.0, connect_timeout=5.0,
                          profile_seconds=0, quick=True)


class Unavailable(Exception):
    """A target that could not be started or does not serve what it should."""


# -- command line --------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark securewsgi against other mutual-TLS WSGI servers and nginx.")
    parser.add_argument("--setup", action="store_true",
                        help="install what the targets need (apt packages when root, "
                             "bench/requirements.txt, two gunicorn venvs in bench/.venvs) "
                             "and exit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: seconds per target, 1 repetition, small N, only "
                             "installed targets, no goals judged; for CI")
    parser.add_argument("--targets", help="comma-separated subset, e.g. securewsgi,nginx")
    parser.add_argument("--repeat", type=int, help="repetitions per metric (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (10)")
    parser.add_argument("--idle", help="idle connection counts (1000,10000)")
    parser.add_argument("--client", choices=("wrk", "ab", "python"),
                        help="throughput load generator: wrk (default; HTTP/1.1, client "
                             "certificate through bench/wrkcert.c), ab (HTTP/1.0) or "
                             "bench/loadgen.py")
    parser.add_argument("--rate", type=float,
                        help="fixed offered rate (req/s) for the latency runs (default: "
                             "50%% of the slowest target's keep-alive req/s in this run)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction,
                        help="py-spy profiles of securewsgi (default: on, off with --quick)")
    parser.add_argument("--server-cpus", help="CPU list for servers (taskset; default 0)")
    parser.add_argument("--client-cpus", help="CPU list for load generators (default 1)")
    parser.add_argument("--securewsgi-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the securewsgi targets' service file, e.g. "
                             "server.max_connections=12000 (repeatable; shown on the page)")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="only render the page (and chart) from an earlier results file")
    parser.add_argument("--output", metavar="RST",
                        help="page to write (default docs/source/benchmarks.rst; --quick: "
                             "next to the results file)")
    return parser


def plan_from_args(args: argparse.Namespace) -> measure.Plan:
    plan = QUICK_PLAN if args.quick else measure.Plan()
    if args.profile is not None:
        seconds = QUICK_PROFILE_SECONDS if args.quick else measure.Plan().profile_seconds
        plan = replace(plan, profile_seconds=seconds if args.profile else 0)
    overrides: dict[str, Any] = {
        "repeat": args.repeat, "duration": args.duration, "client": args.client,
        "rate": args.rate,
        "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
        "idle_counts": tuple(int(n) for n in args.idle.split(",")) if args.idle else None,
    }
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.setup:
        return run_setup()
    if args.render:
        results = json.loads(Path(args.render).read_text())
        page = Path(args.output) if args.output else DOCS_PAGE
        publish(results, page)
        print(f"wrote {page}")
        return 0
    plan = plan_from_args(args)
    try:
        targets = by_name(args.targets.split(",") if args.targets else None)
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    try:
        overrides = tuple(parse_override(item) for item in args.securewsgi_set)
    except ValueError as exc:
        print(f"python -m bench: --securewsgi-set: {exc}", file=sys.stderr)
        return 2
    plan, problem = check_tools(plan)
    if problem:
        print(f"python -m bench: {problem}", file=sys.stderr)
        return 2
    return run(plan, targets, Path(args.output) if args.output else None, overrides)


def check_tools(plan: measure.Plan) -> tuple[measure.Plan, Optional[str]]:
    """The harness's own needs. Without wrk (or ab) a quick run falls back to
    bench/loadgen.py; a full run refuses, since the Python client cannot drive the fast
    targets."""
    if shutil.which("taskset") is None:
        return plan, "taskset not found (util-linux): apt-get install -y util-linux"
    if len(os.sched_getaffinity(0)) < 2:
        return plan, "needs 2 CPUs: one for the server, one for the load generator"
    if plan.client == "wrk":
        problem = wrk.missing()  # builds bench/.build/wrkcert.so on first use
        if problem and plan.quick:
            print(f"bench: {problem}; quick run uses bench/loadgen.py for throughput and "
                  "skips latency at a fixed rate")
            return replace(plan, client="python"), None
        return plan, problem
    if plan.client == "ab" and shutil.which("ab") is None:
        if plan.quick:
            print("bench: ab not installed; quick run uses bench/loadgen.py for throughput")
            return replace(plan, client="python"), None
        return plan, ("ab not installed: apt-get install -y apache2-utils (or python -m bench "
                      "--setup as root); or pass --client python")
    return plan, None


# -- the run -------------------------------------------------------------------------

def run(plan: measure.Plan, targets: list[Target], output: Optional[Path],
        overrides: tuple[tuple[str, Any], ...] = ()) -> int:
    loadgen.raise_open_files_limit()  # inherited by the servers and load generators
    # The harness itself (probes, /proc reads) stays off the server's CPU.
    os.sched_setaffinity(0, procs.cpu_list(plan.client_cpus))
    stamp = datetime.datetime.now(datetime.timezone.utc)
    name = stamp.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if plan.quick else "")
    RESULTS_DIR.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "schema": 1, "mode": "quick" if plan.quick else "full",
        "started": stamp.isoformat(timespec="seconds"), "plan": asdict(plan),
        "machine": machine_info(), "tools": tool_versions(),
        "loadavg_before": _loadavg(), "targets": {},
        "securewsgi_overrides": {key: value for key, value in overrides},
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="securewsgi-bench-") as tmp:
        env = replace(make_env(Path(tmp)), securewsgi_overrides=overrides)
        bench = Bench(env, plan, results, RESULTS_DIR / f"{name}-profiles")
        bench.run_all(targets)
        results["commands"] = bench.commands()
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    results["seconds"] = round(time.monotonic() - began, 1)
    results["loadavg_after"] = _loadavg()
    json_path = RESULTS_DIR / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=1))
    page = output or (RESULTS_DIR / f"{name}.rst" if plan.quick else DOCS_PAGE)
    publish(results, page)
    print(f"bench: wrote {json_path} and {page} in {results['seconds']:.0f}s")
    ours = [results["targets"].get(name, {}) for name in ("securewsgi", "securewsgi-threads")
            if name in results["targets"]]
    measured = ours and all(entry.get("status") == "ok" and entry["runs"]["keepalive"]
                            for entry in ours)
    return 0 if measured else 1


def publish(results: dict[str, Any], page: Path) -> None:
    """The page, and the chart next to it (docs/source/benchmarks.png for the docs page)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    chart = page.with_suffix(".png")
    chart_ok = report.chart(results, chart)
    page.write_text(report.render(results, chart.name if chart_ok else None))


def make_env(workdir: Path) -> Env:
    """A fresh PKI made by the product's own command, plus the PEM `ab -E` needs."""
    pki = workdir / "pki"
    done = subprocess.run([sys.executable, "-m", "securewsgi.commands.certs", "init", str(pki),
                           "--client", "alice"], capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"python -m bench: securewsgi-certs init failed: {done.stderr.strip()}")
    env = Env(workdir=workdir, pki=pki)
    env.client_combined.write_text(env.client_cert.read_text() + env.client_key.read_text())
    env.client_combined.chmod(0o600)
    return env


class Bench:
    """Runs the plan over the targets and fills `results["targets"]`."""

    def __init__(self, env: Env, plan: measure.Plan, results: dict[str, Any],
                 profile_dir: Path) -> None:
        self.env = env
        self.plan = plan
        self.results = results
        self.profile_dir = profile_dir

    def run_all(self, targets: list[Target]) -> None:
        runnable = [t for t in targets if self._describe(t)]
        compared = [t for t in runnable if t.section == "targets"]
        for rep in range(self.plan.repeat):
            for target in list(compared):
                if not self._with_server(target, f"r{rep}", self._throughput_block):
                    compared.remove(target)
        self.results["rate"] = offered_rate(self.results, self.plan)
        rate = self.results["rate"].get("rps")
        if rate:
            print(f"bench: latency at {rate:g} req/s ({self.results['rate']['basis']})")
            for rep in range(self.plan.repeat):
                for target in compared:
                    self._with_server(target, f"rate-r{rep}",
                                      functools.partial(self._rate_block, rate=rate))
        blocking = [t for t in runnable if t.section == "blocking"]
        for rep in range(self.plan.repeat):
            for target in blocking:
                self._with_server(target, f"r{rep}", self._blocking_block)
        if self.plan.profile_seconds > 0:
            for target in (t for t in compared if t.profile):
                self._with_server(target, "profile", self._profile_block)
            for target in compared:
                self._with_server(target, "cpu", self._components_block)
        for count in self.plan.idle_counts:
            for rep in range(self.plan.repeat):
                for target in compared:
                    self._with_server(target, f"idle{count}-r{rep}",
                                      functools.partial(self._idle_block, count=count))

    # bookkeeping
    def _entry(self, target: Target) -> dict[str, Any]:
        return self.results[target.section][target.name]

    def _describe(self, target: Target) -> bool:
        """Record what the target is; False when it is not installed."""
        missing = target.missing()
        entry = {"title": target.title, "notes": target.notes,
                 "status": "not installed" if missing else "ok", "reason": missing,
                 "version": None if missing else target.version(),
                 "runs": {"keepalive": [], "newconn": [], "rate": [], "silent": [],
                          "idle": {}, "blocking": []}}
        self.results.setdefault(target.section, {})[target.name] = entry
        if missing:
            print(f"bench: {target.name}: not installed: {missing}")
        return missing is None

    def _with_server(self, target: Target, run_tag: str,
                     block: Callable[[measure.Running], None]) -> bool:
        """Start `target`, run `block` on it, stop it. False if it did not start."""
        entry = self._entry(target)
        run_id = f"{target.name}-{run_tag}"
        print(f"bench: {run_id} ...", flush=True)
        try:
            running = self._start(target, run_id)
        except Unavailable as exc:
            reason = str(exc).replace(str(self.env.workdir), "$BENCH_TMP")
            print(f"bench: {target.name}: not available: {reason}")
            if not any(entry["runs"][k] for k in ("keepalive", "newconn", "silent",
                                                  "blocking")):
                entry.update(status="not available", reason=reason)
            else:
                entry.setdefault("errors", []).append(f"{run_tag}: {reason}")
            return False
        try:
            block(running)
        finally:
            running.process.stop()
        return True

    def _start(self, target: Target, run_id: str) -> measure.Running:
        launch = target.launch(self.env, run_id)
        entry = self._entry(target)
        argv = procs.pinned(self.plan.server_cpus, launch.argv)
        shown = [procs.pinned(self.plan.server_cpus, h.argv) for h in launch.helpers]
        entry.setdefault("command", self._display("\n".join(shlex.join(a)
                                                             for a in [*shown, argv])))
        entry.setdefault("files", {k: self._display(v) for k, v in launch.files.items()})
        helpers: list[procs.Process] = []
        try:
            for helper in launch.helpers:
                helpers.append(procs.Process(procs.pinned(self.plan.server_cpus, helper.argv),
                                             self.env.workdir, f"{run_id}-{helper.name}",
                                             cwd=launch.cwd))
                wait_until_ready(helpers[-1], helper.ready)
            group = procs.Group(procs.Process(argv, self.env.workdir, run_id, cwd=launch.cwd),
                                helpers)
        except Unavailable:
            for process in helpers:
                process.stop()
            raise
        try:
            port = wait_until_serving(group, launch.port, launch.port_pattern, self.env)
            check = verify(self.env, port)
        except Unavailable:
            group.stop()
            raise
        entry.setdefault("check", check)
        return measure.Running(run_id, group, port, target.name)

    def commands(self) -> dict[str, str]:
        """The load generators' command lines exactly as run (PORT, N and PID vary)."""
        env, plan = self.env, self.plan
        prefix = wrk.shown_environment().split() if plan.client == "wrk" else []
        rate_prefix = wrk.shown_environment(rate=True).split() if plan.client == "wrk" else []
        loaded = {
            "keep-alive throughput": [*prefix, *measure.throughput_argv(
                env, 0, plan, plan.duration, True)],
            "new connections": [*prefix, *measure.throughput_argv(
                env, 0, plan, plan.duration, False)],
            "latency at a fixed rate": [*rate_prefix, *measure.throughput_argv(
                env, 0, plan, plan.duration, True)],
            "blocking app": [*prefix, *measure.throughput_argv(
                env, 0, replace(plan, connect_timeout=60), plan.duration, True,
                plan.blocking_clients)],
            "idle capacity": measure.idle_argv(env, 0, plan, 0),
            "silent connections": measure.silent_argv(env, 0, plan),
        }
        if plan.profile_seconds > 0:
            loaded["profile (during a keep-alive and a new-connection run)"] = \
                measure.pyspy_argv("py-spy", 0, plan, Path("PROFILE.txt"))
            loaded["CPU by component (during a keep-alive and a new-connection run)"] = \
                measure.perf_argv("perf", [0], plan.profile_seconds, Path("CPU.perf"))
        placeholders = {"127.0.0.1:0/": "127.0.0.1:PORT/", "--port 0": "--port PORT",
                        "--connections 0": "--connections N", "--pid 0": "--pid PID",
                        "-p 0": "-p PIDS"}
        shown = {}
        for label, argv in loaded.items():
            split = next((i for i, word in enumerate(argv) if "=" not in word), 0)
            text = self._display(shlex.join([*argv[:split], *procs.pinned(plan.client_cpus,
                                                                            argv[split:])]))
            for literal, placeholder in placeholders.items():
                text = text.replace(literal, placeholder)
            shown[label] = text
        return shown

    def _display(self, text: str) -> str:
        return text.replace(sys.executable, "python").replace(
            str(self.env.workdir), "$BENCH_TMP").replace(str(REPO_DIR) + "/", "")

    # the blocks
    def _throughput_block(self, run: measure.Running) -> None:
        runs = self._entry_for(run)["runs"]
        if self.plan.warmup > 0:
            measure.throughput(self.env, run, self.plan, True, self.plan.warmup, "warmup")
        runs["keepalive"].append(measure.throughput(self.env, run, self.plan, True,
                                                    tag="keepalive"))
        runs["newconn"].append(measure.throughput(self.env, run, self.plan, False,
                                                  tag="newconn"))
        runs["silent"].append(measure.silent(self.env, run, self.plan, "silent"))
        self._progress(run.name, runs)

    def _rate_block(self, run: measure.Running, rate: float) -> None:
        if self.plan.warmup > 0:
            measure.throughput(self.env, run, self.plan, True, self.plan.warmup, "warmup",
                               rate=rate)
        result = measure.throughput(self.env, run, self.plan, True, tag="rate", rate=rate)
        self._entry_for(run)["runs"]["rate"].append(result)
        print(f"bench:   at {rate:g} req/s: achieved {result.get('rps')}, p50 "
              f"{result.get('p50_ms')} ms, p99 {result.get('p99_ms')} ms, server CPU "
              f"{result.get('server_cpu_us')} us/request", flush=True)

    def _blocking_block(self, run: measure.Running) -> None:
        result = measure.blocking(self.env, run, self.plan, "blocking")
        self._entry_for(run)["runs"]["blocking"].append(result)
        print(f"bench:   {self.plan.blocking_clients} clients: {result.get('rps')} req/s "
              f"(ceiling {result.get('ceiling_rps')})", flush=True)

    def _profile_block(self, run: measure.Running) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        measure.throughput(self.env, run, self.plan, True, max(self.plan.warmup, 1), "warmup")
        entry = self._entry_for(run)
        entry["profile"] = {
            kind: measure.profile(self.env, run, self.plan, kind == "keepalive",
                                  self.profile_dir, f"{run.name}-{kind}")
            for kind in ("keepalive", "newconn")
        }

    def _components_block(self, run: measure.Running) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        measure.throughput(self.env, run, self.plan, True, max(self.plan.warmup, 1), "warmup")
        entry = self._entry_for(run)
        entry["components"] = {
            kind: measure.components(self.env, run, self.plan, kind == "keepalive",
                                     self.profile_dir, f"{run.name}-{kind}")
            for kind in ("keepalive", "newconn")
        }
        for kind, data in entry["components"].items():
            print(f"bench:   {kind}: " + (data.get("error") or ", ".join(
                f"{name} {us} us" for name, us in data["us"].items())), flush=True)

    def _idle_block(self, run: measure.Running, count: int) -> None:
        result = measure.idle(self.env, run, self.plan, count, f"idle{count}")
        self._entry_for(run)["runs"]["idle"].setdefault(str(count), []).append(result)
        fresh = result.get("fresh_ms")
        print(f"bench:   held {result.get('held')}/{count}, "
              f"{result.get('rss_per_conn_kib')} KiB/conn, "
              f"{f'fresh client {fresh} ms' if fresh is not None else result.get('fresh_error')}",
              flush=True)

    def _entry_for(self, run: measure.Running) -> dict[str, Any]:
        for section in ("targets", "blocking"):
            if run.target in self.results.get(section, {}):
                return self.results[section][run.target]
        raise KeyError(run.target)

    @staticmethod
    def _progress(run_id: str, runs: dict[str, Any]) -> None:
        keep, new, quiet = runs["keepalive"][-1], runs["newconn"][-1], runs["silent"][-1]
        print(f"bench:   keep-alive {keep.get('rps')} req/s ({keep.get('server_cpu_us')} us "
              f"server CPU/request, reused {keep.get('keepalive_share')}), new connections "
              f"{new.get('rps')}/s ({new.get('server_cpu_us')} us/connection), fresh client quiet "
              f"{quiet.get('quiet_ms')} ms / with silent {quiet.get('silent_ms')} ms",
              flush=True)


def wait_until_ready(process: procs.Process, ready: Callable[[], bool]) -> None:
    """Poll (bounded) until a helper process says it is ready."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not process.alive():
            raise Unavailable(f"{process.name}: {process.last_error_line()}")
        if ready():
            return
        time.sleep(0.1)  # poll interval
    process.stop()
    raise Unavailable(f"{process.name} was not ready within {START_TIMEOUT:g}s")


def offered_rate(results: dict[str, Any], plan: measure.Plan) -> dict[str, Any]:
    """The fixed rate of the latency runs: --rate, or `rate_share` of the slowest
    target's median keep-alive req/s in this run (targets whose keep-alive number is
    not a keep-alive number are left out)."""
    if plan.client != "wrk":
        return {"rps": None, "basis": "not measured: latency at a fixed rate needs wrk"}
    if plan.rate:
        return {"rps": plan.rate, "basis": "--rate"}
    capacities = {}
    for name, entry in results["targets"].items():
        runs = [r for r in entry["runs"]["keepalive"] if r.get("rps")]
        if runs and report.keepalive_fair(entry) is None:
            capacities[name] = statistics.median(r["rps"] for r in runs)
    if not capacities:
        return {"rps": None, "basis": "not measured: no keep-alive capacity was measured"}
    slowest = min(capacities, key=capacities.__getitem__)
    rate = max(1.0, round(plan.rate_share * capacities[slowest], -1))
    return {"rps": rate, "basis": f"{100 * plan.rate_share:.0f}% of {slowest}'s "
            f"{capacities[slowest]:,.0f} req/s", "slowest": slowest,
            "share": plan.rate_share}


def wait_until_serving(process: procs.Group, port: int, pattern: Optional[str],
                       env: Env) -> int:
    """Poll (bounded) until the server answers one mutual-TLS GET; its port."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not process.alive():
            raise Unavailable(process.last_error_line())
        if port == 0 and pattern:
            match = re.search(pattern, process.main.stderr_text())
            port = int(match.group(1)) if match else 0
        if port and probe(env, port, with_cert=True)["ok"]:
            return port
        time.sleep(0.1)  # poll interval
    raise Unavailable(f"did not answer within {START_TIMEOUT:g}s")


def probe(env: Env, port: int, with_cert: bool) -> dict[str, Any]:
    context = loadgen.client_context(str(env.ca), str(env.client_cert) if with_cert else None,
                                     str(env.client_key) if with_cert else None)
    return asyncio.run(loadgen.probe(loadgen.Peer("127.0.0.1", port, context), timeout=3.0))


def verify(env: Env, port: int) -> dict[str, Any]:
    """The target serves the right body and refuses a client without a certificate."""
    good = probe(env, port, with_cert=True)
    if not good["ok"] or good["status"] != 200 or good["body"] != "hello, world\n":
        raise Unavailable(f"answered {good!r} instead of 200 'hello, world'")
    refused = probe(env, port, with_cert=False)
    # nginx completes the handshake and answers 400 "No required SSL certificate was sent"
    enforced = not refused["ok"] or refused["status"] != 200
    return {"tls_version": good["tls_version"], "cipher": good["cipher"],
            "keep_alive_http11": good["keep_alive"], "mtls_enforced": enforced,
            "no_cert_result": refused.get("error") or f"HTTP {refused.get('status')}",
            "session_tickets": session_tickets(env, port)}


# A stateless TLS 1.3 ticket carries the whole session (the client certificate
# included): hundreds of bytes. A stateful one is a session id: a few dozen.
STATELESS_TICKET_BYTES = 128


def session_tickets(env: Env, port: int) -> str:
    """What the target sends after a full mutual-TLS handshake, as `openssl s_client
    -msg` shows it: 'none', 'N stateful (B bytes)' or 'N stateless (B bytes)'. Every
    target should send no stateless ticket (see METHOD in report.py)."""
    argv = [shutil.which("openssl") or "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
            "-cert", str(env.client_cert), "-key", str(env.client_key), "-CAfile", str(env.ca),
            "-msg", "-ign_eof"]
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    try:
        done = subprocess.run(argv, input=request, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not checked: {exc}"
    sizes = [int(size, 16) for size in re.findall(
        rb"<<< TLS 1.3, Handshake \[length ([0-9a-f]+)\], NewSessionTicket", done.stdout)]
    if not sizes:
        return "none"
    kind = "stateless" if max(sizes) > STATELESS_TICKET_BYTES else "stateful"
    return f"{len(sizes)} {kind} ({max(sizes)} bytes)"


# -- facts about the machine and the tools -------------------------------------------

def machine_info() -> dict[str, Any]:
    lscpu = _output(["lscpu"])
    model = re.search(r"Model name:\s+(.+)", lscpu)
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
        "hypervisor": (re.search(r"Hypervisor vendor:\s+(.+)", lscpu) or [None, None])[1],
    }


def tool_versions() -> dict[str, str]:
    ab_version = re.search(r"Version (\S+)", _output(["ab", "-V"])) if shutil.which("ab") else None
    versions = {"wrk": wrk.version(),
                "ab": f"ApacheBench {ab_version.group(1)}" if ab_version else "-",
                "taskset": _output(["taskset", "--version"]).strip()}
    spy = measure.pyspy_path()
    versions["py-spy"] = _output([spy, "--version"]).strip() if spy else "-"
    return versions


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return done.stdout + done.stderr


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
