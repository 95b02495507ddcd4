"""Turn a results file into docs/benchmarks.rst and its chart.

Everything on the page is computed from the JSON alone (``python -m bench --render
FILE`` redraws it), so a page can always be traced back to the raw runs. Each number
is the median of the repetitions with min–max beside it; goals are judged on medians.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

OURS = "securewsgi"
NOISE_PERCENT = 20  # other load on the server's CPU above this makes a run "noisy"
Runs = dict[str, Any]


# -- statistics ----------------------------------------------------------------------

@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    count: int


def stat(values: list[Optional[float]]) -> Optional[Stat]:
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return None
    return Stat(statistics.median(numbers), min(numbers), max(numbers), len(numbers))


def metric(results: dict[str, Any], target: str, path: str) -> Optional[Stat]:
    """A metric by path: 'keepalive.rps', 'silent.ratio', 'idle.10000.fresh_ms'."""
    entry = results["targets"].get(target)
    if not entry or entry.get("status") != "ok":
        return None
    parts = path.split(".")
    runs: Any = entry["runs"][parts[0]]
    if parts[0] == "idle":
        runs = runs.get(parts[1], [])
    return stat([run.get(parts[-1]) for run in runs])


def ratio(results: dict[str, Any], path: str, other: str) -> Optional[float]:
    ours, theirs = metric(results, OURS, path), metric(results, other, path)
    if ours is None or theirs is None or not theirs.median:
        return None
    return ours.median / theirs.median


# -- goals ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    """One target from issue 8, judged on the medians of one run."""

    title: str
    need: str
    judge: Callable[[dict[str, Any]], tuple[Optional[str], Optional[bool], str]]


def _ratio_goal(path: str, other: str, need: float) -> Callable[..., Any]:
    def judge(results: dict[str, Any]) -> tuple[Optional[str], Optional[bool], str]:
        value = ratio(results, path, other)
        if value is None:
            return None, None, f"not measured ({other} or securewsgi missing)"
        if value >= need:
            return f"{value:.2f}×", True, f"met, {100 * (value / need - 1):.0f}% to spare"
        return f"{value:.2f}×", False, (f"missed by {100 * (1 - value / need):.0f}%: securewsgi "
                                        f"needs {100 * (need / value - 1):.0f}% more")
    return judge


def _idle_goal(field: str, limit: float, unit: str) -> Callable[..., Any]:
    def judge(results: dict[str, Any]) -> tuple[Optional[str], Optional[bool], str]:
        runs = _idle_runs(results, 10000)
        if runs is None:
            return None, None, "not measured (run with 10000 in --idle)"
        held = stat([r.get("held") for r in runs])
        if held is None or held.median < 10000:
            count = f"{held.median:,.0f}" if held else "0"
            errors = {r.get("fresh_error") or r.get("first_error") for r in runs} - {None}
            why = f"; {sorted(errors)[0]}" if errors else ""
            return None, False, (f"missed: held only {count} of 10,000{why} (a round number "
                                 "is a connection pool: server.max_connections)")
        value = stat([r.get(field) for r in runs])
        if value is None:
            errors = sorted({r.get("fresh_error") or "no value" for r in runs})
            return None, False, f"missed: {errors[0]}"
        shown = f"{value.median:.1f} {unit}"
        if value.median <= limit:
            return shown, True, f"met, {limit - value.median:.1f} {unit} to spare"
        return shown, False, (f"missed by {value.median - limit:.1f} {unit} "
                              f"({100 * (value.median / limit - 1):.0f}% over)")
    return judge


def _idle_runs(results: dict[str, Any], count: int) -> Optional[list[dict[str, Any]]]:
    entry = results["targets"].get(OURS) or {}
    runs = entry.get("runs", {}).get("idle", {}).get(str(count))
    return runs or None


def _silent_goal(results: dict[str, Any]) -> tuple[Optional[str], Optional[bool], str]:
    value = metric(results, OURS, "silent.ratio")
    if value is None:
        runs = (results["targets"].get(OURS) or {}).get("runs", {}).get("silent", [])
        errors = sorted({r.get("silent_error") or r.get("error") or "" for r in runs} - {""})
        return None, (False if errors else None), (f"missed: {errors[0]}" if errors
                                                   else "not measured")
    if value.median <= 1.10:
        return f"{value.median:.2f}×", True, "met"
    return f"{value.median:.2f}×", False, f"missed: {100 * (value.median - 1):.0f}% slower"


GOALS = (
    Goal("Keep-alive req/s, 1 worker, vs eventlet-raw", "≥ 1.2×",
         _ratio_goal("keepalive.rps", "eventlet-raw", 1.2)),
    Goal("Keep-alive req/s, 1 worker, vs gunicorn -k eventlet", "≥ 1.3×",
         _ratio_goal("keepalive.rps", "gunicorn-eventlet", 1.3)),
    Goal("New mTLS connections/s vs nginx", "≥ 0.9×",
         _ratio_goal("newconn.rps", "nginx", 0.9)),
    Goal("10,000 idle mTLS connections: fresh-client latency", "< 50 ms",
         _idle_goal("fresh_ms", 50, "ms")),
    Goal("10,000 idle mTLS connections: RSS per held connection", "≤ 40 KiB",
         _idle_goal("rss_per_conn_kib", 40, "KiB")),
    Goal("50 silent connections: fresh-client latency vs quiet", "≤ 1.10×", _silent_goal),
)


def judge_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    judged = []
    for goal in GOALS:
        measured, met, verdict = goal.judge(results)
        judged.append({"goal": goal.title, "need": goal.need, "measured": measured,
                       "met": met, "verdict": verdict})
    return judged


# -- notes: what makes a number less than it seems -----------------------------------

def notes(results: dict[str, Any]) -> list[str]:
    found = []
    server_cpu, client_cpu = (str(results["plan"][key]).split(",")[0].split("-")[0]
                              for key in ("server_cpus", "client_cpus"))
    for name, entry in results["targets"].items():
        if entry.get("status") != "ok":
            continue
        check = entry.get("check") or {}
        if check and not check.get("mtls_enforced"):
            found.append(f"**{name} accepted a client without a certificate**: its numbers "
                         "are not mutual TLS.")
        noise = []
        for kind, label in (("keepalive", "keep-alive"), ("newconn", "new-connection")):
            found.extend(_run_notes(name, label, kind, entry["runs"][kind], server_cpu,
                                    client_cpu))
            others = [_other_load(r, server_cpu) for r in entry["runs"][kind]]
            noisy = [o for o in others if o is not None and o > NOISE_PERCENT]
            if noisy:
                noise.append(f"{label} {len(noisy)} of {len(others)} run(s), up to "
                             f"{max(noisy):.0f}%")
        if noise:
            found.append(f"{name}: noisy: other load (other programs, kernel work) took CPU "
                         f"time from the server's CPU in {'; '.join(noise)}.")
        for error in entry.get("errors", []):
            found.append(f"{name}: {error}")
    return found


def _run_notes(name: str, label: str, kind: str, runs: list[dict[str, Any]],
               server_cpu: str, client_cpu: str) -> list[str]:
    found = []
    shares = [r.get("keepalive_share") for r in runs if r.get("keepalive_share") is not None]
    if kind == "keepalive" and shares and min(shares) < 0.9:
        found.append(f"{name}: only {100 * min(shares):.0f}% of keep-alive requests reused a "
                     "connection: the server did not keep ab's HTTP/1.0 connections alive, "
                     "so its keep-alive number includes a handshake per request.")
    saturated = [r for r in runs if _core_busy(r, client_cpu) >= 90
                 and _core_busy(r, server_cpu) < 85]
    if saturated:
        found.append(f"{name}, {label}: the load generator's CPU was "
                     f"{_core_busy(saturated[0], client_cpu):.0f}% busy while the server's was "
                     f"{_core_busy(saturated[0], server_cpu):.0f}%: the load generator is the "
                     "limit, the server may be faster than shown.")
    waiting = [r for r in runs if r.get("rps") and _core_busy(r, server_cpu) < 70
               and _core_busy(r, client_cpu) < 70]
    if waiting:
        found.append(f"{name}, {label}: the server's CPU was only "
                     f"{_core_busy(waiting[0], server_cpu):.0f}% busy and the load generator's "
                     f"{_core_busy(waiting[0], client_cpu):.0f}%: the server waits on something "
                     "(timers, Nagle/delayed ACK, locks), not on CPU.")
    failed = sum((r.get("failed") or 0) + (r.get("non_2xx") or 0) for r in runs)
    if failed:
        found.append(f"{name}, {label}: {failed:,} failed or non-2xx responses in total.")
    errors = sorted({r["error"] for r in runs if r.get("error")})
    if errors:
        found.append(f"{name}, {label}: {errors[0]}")
    return found


def _core_busy(run: dict[str, Any], cpu: str) -> float:
    """How busy a CPU was (any process, and interrupts: on loopback much of the TCP
    work); 100 when unknown, so that no note is made up."""
    share = (run.get("cpu_shares") or {}).get(cpu)
    return share["process"] + share["interrupt"] if share else 100.0


def _other_load(run: dict[str, Any], cpu: str) -> Optional[float]:
    """Process time on the server's CPU not spent by the server (other programs)."""
    share = (run.get("cpu_shares") or {}).get(cpu)
    if share is None or run.get("server_cpu_pct") is None:
        return None
    # The kernel charges some softirq work to the server's own system time.
    return share["process"] + share["interrupt"] - run["server_cpu_pct"]


# -- formatting ----------------------------------------------------------------------

def number(value: float) -> str:
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(value: Optional[Stat], fmt: Callable[[float], str] = number) -> str:
    """'median (min–max)', or just the median when the repetitions agree."""
    if value is None:
        return "–"
    if value.count == 1 or value.low == value.high:
        return fmt(value.median)
    return f"{fmt(value.median)} ({fmt(value.low)}–{fmt(value.high)})"


def two_decimals(value: float) -> str:
    return f"{value:.2f}"


def idle_cell(results: dict[str, Any], name: str, count: int, field: str) -> str:
    """A latency/RSS cell, or why there is no number (timed out, not all held)."""
    runs = (results["targets"][name].get("runs", {}).get("idle", {}) or {}).get(str(count))
    if not runs:
        return "–"
    value = stat([r.get(field) for r in runs])
    if field == "fresh_ms" and value is None:
        errors = sorted({r.get("fresh_error") or "no answer" for r in runs})
        return errors[0]
    text = cell(value)
    if field == "held" and value is not None and value.median < count:
        first = next((r.get("first_error") for r in runs if r.get("first_error")), None)
        text += f" of {count:,}" + (f" ({first})" if first else "")
    return text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """An RST list-table (cells may be long)."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        for index, value in enumerate(row):
            lines.append(f"   {'* -' if index == 0 else '  -'} {value or ' '}")
    return [*lines, ""]


def heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def literal(text: str) -> list[str]:
    return ["::", "", *("    " + line for line in text.splitlines()), ""]


# -- the page ------------------------------------------------------------------------

HOW_TO_RUN = """\
Run from the repository root, with securewsgi installed (``pip install -e .``)::

    python -m bench --setup     # once: apt packages (as root), bench/requirements.txt,
                                # bench/.venvs/gunicorn-eventlet and gunicorn-gthread
    python -m bench             # full run (about 30 minutes), rewrites this page
    python -m bench --quick     # smoke test for CI (under 3 minutes, no goals judged)

Useful options: ``--targets securewsgi,eventlet-raw,nginx``, ``--repeat 5``,
``--duration 20``, ``--idle 1000,10000``, ``--client python`` (bench/loadgen.py instead
of ``ab`` for throughput), ``--no-profile``, ``--securewsgi-set
server.max_connections=12000`` (try a setting; repeatable, shown on the page),
``--render bench/results/FILE.json`` (redraw this page from a results file).

A run never installs anything: a target whose software is missing is skipped with
the command that installs it, and a target that fails to start is shown as "not
available" with the server's own error line.

Each run writes ``bench/results/<timestamp>.json`` (every repetition's raw numbers),
py-spy profiles in ``bench/results/<timestamp>-profiles/``, this page and
``docs/benchmarks.png``. ``--quick`` writes its page next to its results file and
leaves this one alone.
"""

METHOD = """\
* Every target serves ``bench/hello.py`` (13 bytes, with a Content-Length) over mutual
  TLS on 127.0.0.1, with a test PKI made by ``securewsgi-certs init`` (ECDSA P-256):
  a client certificate signed by the test CA is required. Before measuring, the harness
  checks each target answers ``hello, world`` and refuses a client without a
  certificate.
* The server is pinned to CPU {server} and the load generator to CPU {client}
  (``taskset``). Repetitions are interleaved across targets (target order inside each
  repetition), so drift spreads over all of them. Each number is the **median of
  {repeat} repetition(s)**, with min–max in brackets.
* **Keep-alive**: ``ab -k`` with {concurrency} connections for {duration:g} s
  (``ab`` speaks HTTP/1.0 and asks for keep-alive; the harness checks that connections
  were reused). Latency percentiles from ``ab`` are whole milliseconds.
* **New connections**: ``ab`` without ``-k``, {concurrency} at a time: each request is a
  new TCP connection with a full mutual-TLS handshake (``ab`` never resumes sessions).
* **Idle capacity**: bench/loadgen.py opens N connections (each completes the handshake
  and one keep-alive GET, so the server has verified the certificate), holds them, and
  the harness reads the server's RSS (VmRSS, summed over its processes) before and
  while they are held; then a fresh client times {samples} GETs, each on a new
  connection (timeout {fresh_timeout:g} s). Every idle run uses a freshly started server.
* **Silent connections**: the fresh-client latency (median of {samples}) on a quiet
  server, then again while {silent} TCP connections are open that never send a byte.
* Load generators: ``ab`` (C, one core) for throughput: it must not be the
  bottleneck, so every run records both processes' CPU use, and a note appears below
  when the load generator was saturated. bench/loadgen.py (asyncio) for idle, silent
  and fresh-client timings, where its own speed does not matter.
"""


def render(results: dict[str, Any], chart_name: Optional[str]) -> str:
    plan = results["plan"]
    quick = results["mode"] == "quick"
    lines = [*heading("Benchmarks", "="), "Issue 8: how fast is securewsgi, and how does it "
             "compare with what users run today?", "", ".. contents::", "   :local:", "",
             *heading("How to run", "-"), *HOW_TO_RUN.splitlines(), ""]
    lines += _run_summary(results, quick)
    lines += _goals_section(results, quick)
    lines += _results_section(results, chart_name)
    lines += _profile_section(results)
    lines += heading("Method", "-")
    lines += METHOD.format(server=plan["server_cpus"], client=plan["client_cpus"],
                           repeat=plan["repeat"], concurrency=plan["concurrency"],
                           duration=plan["duration"], samples=plan["fresh_samples"],
                           fresh_timeout=plan["fresh_timeout"],
                           silent=plan["silent_count"]).splitlines()
    lines += ["", *_targets_section(results), *_commands_section(results)]
    return "\n".join(lines).rstrip() + "\n"


def _run_summary(results: dict[str, Any], quick: bool) -> list[str]:
    machine = results["machine"]
    lines = heading("This run", "-")
    if quick:
        lines += [".. note:: A ``--quick`` smoke run: one short repetition and small N. "
                  "Its numbers only show that the harness works.", ""]
    lines += [
        f"* {results['started']} – {results.get('finished', '?')}, {results['mode']} run, "
        f"{results.get('seconds', 0) / 60:.0f} min; load average before/after: "
        f"{results.get('loadavg_before')} / {results.get('loadavg_after')}",
        f"* Machine: {machine['cpu_model']}, {machine['cpus']} CPUs"
        + (f" ({machine['hypervisor']} guest)" if machine.get("hypervisor") else "")
        + f", {machine['memory_gib']} GiB, Linux {machine['kernel']}",
        f"* Python {machine['python']}, {machine['openssl']}; {results['tools']['ab']}; "
        f"{results['tools']['py-spy']}",
    ]
    overrides = results.get("securewsgi_overrides")
    if overrides:
        lines.append("* securewsgi settings changed with ``--securewsgi-set``: " + ", ".join(
            f"``{key}: {value}``" for key, value in overrides.items()))
    return [*lines, ""]


def _goals_section(results: dict[str, Any], quick: bool) -> list[str]:
    lines = heading("Goals from the issue", "-")
    judged = judge_goals(results)
    if quick:
        lines += ["Not judged in a quick run (ratios shown for information).", ""]
    rows = []
    for goal in judged:
        if quick:
            status, verdict = "", "–"
        else:
            status = {True: "**met**", False: "**not met**"}.get(goal["met"], "")
            verdict = goal["verdict"]
        rows.append([goal["goal"], goal["need"], goal["measured"] or "–", status, verdict])
    lines += table(["goal", "needs", "measured (median)", "", "verdict"], rows)
    return lines


def _names(results: dict[str, Any]) -> list[str]:
    return [n for n, e in results["targets"].items() if e.get("status") == "ok"]


def _results_section(results: dict[str, Any], chart_name: Optional[str]) -> list[str]:
    lines = heading("Results", "-")
    if chart_name:
        lines += [f".. image:: {chart_name}", "   :alt: keep-alive req/s, new mTLS "
                  "connections/s and RSS per idle connection per target", ""]
    names = _names(results)
    rows = []
    concurrency = results["plan"]["concurrency"]
    for name in names:
        rps = metric(results, name, "keepalive.rps")
        rows.append([name, cell(rps),
                     number(1000 * concurrency / rps.median) if rps and rps.median else "–",
                     cell(metric(results, name, "keepalive.p50_ms")),
                     cell(metric(results, name, "keepalive.p99_ms")),
                     cell(metric(results, name, "newconn.rps")),
                     cell(metric(results, name, "newconn.p99_ms")),
                     f"{cell(metric(results, name, 'keepalive.server_cpu_pct'))} / "
                     f"{cell(metric(results, name, 'keepalive.client_cpu_pct'))}",
                     f"{cell(metric(results, name, 'newconn.server_cpu_pct'))} / "
                     f"{cell(metric(results, name, 'newconn.client_cpu_pct'))}"])
    lines += heading("Throughput", "~")
    lines += ["*mean ms* is the concurrency divided by the throughput (Little's law), a "
              "check on ab's whole-millisecond percentiles.", ""]
    lines += table(["target", "keep-alive req/s", "mean ms", "p50 ms", "p99 ms",
                    "new mTLS conn/s",
                    "p99 ms (new)", "CPU % server / client (keep-alive)",
                    "CPU % server / client (new)"], rows)
    lines += _ratio_table(results, names)
    lines += _idle_table(results, names)
    lines += heading("Silent connections", "~")
    silent_rows = [[name, cell(metric(results, name, "silent.quiet_ms")),
                    _silent_cell(results, name),
                    cell(metric(results, name, "silent.ratio"), two_decimals)]
                   for name in names]
    lines += table(["target", "fresh client, quiet (ms)",
                    f"with {results['plan']['silent_count']} silent connections (ms)",
                    "ratio"], silent_rows)
    unavailable = [(n, e) for n, e in results["targets"].items() if e.get("status") != "ok"]
    if unavailable:
        lines += heading("Not measured", "~")
        lines += [f"* **{n}**: {e['status']}: {e.get('reason')}" for n, e in unavailable] + [""]
    found = notes(results)
    if found:
        lines += heading("Notes on these numbers", "~")
        lines += [f"* {note}" for note in found] + [""]
    return lines


def _silent_cell(results: dict[str, Any], name: str) -> str:
    value = metric(results, name, "silent.silent_ms")
    if value is not None:
        return cell(value)
    runs = results["targets"][name]["runs"]["silent"]
    errors = sorted({r.get("silent_error") or r.get("error") or "–" for r in runs})
    return errors[0]


def _ratio_table(results: dict[str, Any], names: list[str]) -> list[str]:
    if OURS not in names:
        return []
    rows = []
    for other in (n for n in names if n != OURS):
        values = [ratio(results, path, other) for path in ("keepalive.rps", "newconn.rps")]
        rows.append([f"securewsgi / {other}",
                     *(f"{v:.2f}×" if v is not None else "–" for v in values)])
    return [*heading("Ratios (medians)", "~"),
            *table(["", "keep-alive req/s", "new mTLS connections/s"], rows)]


def _idle_table(results: dict[str, Any], names: list[str]) -> list[str]:
    counts = results["plan"]["idle_counts"]
    header = ["target"]
    for count in counts:
        header += [f"{count:,} held", f"{count:,}: fresh client ms", f"{count:,}: KiB/conn"]
    rows = [[name, *(idle_cell(results, name, c, f) for c in counts
                     for f in ("held", "fresh_ms", "rss_per_conn_kib"))] for name in names]
    if len(counts) > 1:
        low, high = min(counts), max(counts)
        header.append(f"KiB/conn, marginal {low:,}→{high:,}")
        for row, name in zip(rows, names):
            value = marginal_rss(results, name, low, high)
            row.append(f"{value:.1f}" if value is not None else "–")
    intro = ["*KiB/conn* is (RSS held − RSS before) / connections held, so it includes "
             "one-time growth of the process; the *marginal* column, the RSS difference "
             "between the smallest and the largest N divided by the extra connections, "
             "is the cost of one more connection (shown when both were fully held).", ""]
    return [*heading("Idle capacity", "~"), *intro, *table(header, rows)]


def marginal_rss(results: dict[str, Any], name: str, low: int, high: int) -> Optional[float]:
    """KiB per extra connection between two idle runs, when both held every connection."""
    idle = results["targets"][name]["runs"]["idle"]
    points = []
    for count in (low, high):
        runs = idle.get(str(count), [])
        held = stat([r.get("held") for r in runs])
        rss = stat([r.get("rss_held_kib") for r in runs])
        if held is None or rss is None or held.median < count:
            return None
        points.append(rss.median)
    return (points[1] - points[0]) / (high - low)


def _profile_section(results: dict[str, Any]) -> list[str]:
    profiles = (results["targets"].get(OURS) or {}).get("profile")
    if not profiles:
        return []
    lines = heading("Where securewsgi spends its CPU", "-")
    lines += ["py-spy samples of the server process while ab drives it (grouped by "
              "function; idle samples dropped, so shares are of busy time). *Self* is time "
              "in the function itself, C calls it makes included; *total* includes "
              "everything it calls.", ""]
    for kind, label in (("keepalive", "Keep-alive requests"), ("newconn", "New connections")):
        data = profiles.get(kind) or {}
        lines += heading(label, "~")
        if data.get("error"):
            lines += [f"Not profiled: {data['error']}", ""]
            continue
        busy = 100 * data["samples"] / data["expected_samples"] if data.get(
            "expected_samples") else 0
        lines += [f"{data['samples']:,} busy samples ({busy:.0f}% of wall time).", ""]
        rows = [[f"``{s[0]}``", f"{s[1]}", f"``{t[0]}``", f"{t[1]}"]
                for s, t in zip(data["self"][:12], data["inclusive"][:12])]
        lines += table(["self", "%", "total", "%"], rows)
    return lines


def _targets_section(results: dict[str, Any]) -> list[str]:
    lines = heading("Targets and versions", "-")
    rows = []
    for name, entry in results["targets"].items():
        check = entry.get("check") or {}
        tls = f"{check.get('tls_version')} {check.get('cipher')}" if check else "–"
        enforced = {True: "yes", False: "**no**"}.get(check.get("mtls_enforced"), "–")
        rows.append([name, entry.get("version") or "–", entry["notes"], tls, enforced])
    lines += table(["target", "version", "configuration", "negotiated", "cert required"], rows)
    return lines


def _commands_section(results: dict[str, Any]) -> list[str]:
    lines = heading("Exact commands", "-")
    lines += ["``$BENCH_TMP`` is the run's temporary directory (PKI, configs, logs); paths "
              "are relative to the repository root; PORT, N and PID change per run.", ""]
    for label, command in results.get("commands", {}).items():
        lines += [f"{label}:", "", *literal(command)]
    for name, entry in results["targets"].items():
        if not entry.get("command"):
            continue
        lines += [f"{name}:", "", *literal(entry["command"])]
        for file_name, text in (entry.get("files") or {}).items():
            lines += [f"{name} ``{file_name}``:", "", *literal(text)]
    return lines


def _held_label(results: dict[str, Any], name: str, count: int, label: str) -> str:
    held = stat([r.get("held") for r in
                 results["targets"][name]["runs"]["idle"].get(str(count), [])])
    if held is not None and held.median < count:
        return f"{label}\n({held.median:,.0f} held)"
    return label


# -- the chart -----------------------------------------------------------------------

def chart(results: dict[str, Any], path: Path) -> bool:
    """Bar charts (median, min–max whiskers); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = _names(results)
    if not names:
        return False
    largest = max(results["plan"]["idle_counts"])
    panels = [("keepalive.rps", "keep-alive req/s"), ("newconn.rps", "new mTLS connections/s"),
              (f"idle.{largest}.rss_per_conn_kib", f"KiB RSS per idle connection ({largest:,})")]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for axis, (path_key, title) in zip(axes, panels):
        stats = [metric(results, name, path_key) for name in names]
        medians = [s.median if s else 0 for s in stats]
        errors = [[s.median - s.low if s else 0 for s in stats],
                  [s.high - s.median if s else 0 for s in stats]]
        colors = ["#c0392b" if n.startswith(OURS) else "#7f8c8d" for n in names]
        bars = axis.bar(range(len(names)), medians, yerr=errors, color=colors, capsize=3)
        labels = [number(s.median) if s else "–" for s in stats]
        if path_key.startswith("idle."):
            labels = [_held_label(results, name, largest, label)
                      for name, label in zip(names, labels)]
        axis.bar_label(bars, labels=labels, fontsize=7, padding=2)
        if path_key == "keepalive.rps" and max(medians, default=0) > 5 * min(
                (m for m in medians if m), default=1):
            axis.set_yscale("log")  # nginx is an order of magnitude above the rest
            axis.set_ylim(bottom=100, top=max(medians) * 3)
            title += " (log scale)"
        else:
            axis.margins(y=0.15)  # room for the labels
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{results['mode']} run {results['started']} (median, min–max)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
