"""Turn a results file into docs/source/benchmarks.rst and its chart.

Everything on the page is computed from the JSON alone (``python -m bench --render
FILE`` redraws it), so a page can always be traced back to the raw runs. Each number
is the median of the repetitions with min–max beside it; goals are judged on medians,
as ratios of medians from the same run.

A number that would mean something else than its column says is not shown: a
keep-alive run in which the server closed its connections (so req/s counts
handshakes), a new-connection run in which sessions were resumed, a run with error
responses. The cell then says "not measured" and why (`unmeasured`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

OURS = "securewsgi"
THREADS = "securewsgi-threads"
NOISE_PERCENT = 20  # other load on the server's CPU above this makes a run "noisy"
MIN_REUSE = 0.9  # keep-alive: share of requests that must reuse a connection
MIN_HANDSHAKES = 0.95  # new connections: full handshakes per request
MAX_ERROR_SHARE = 0.01  # failed or non-2xx responses
MIN_RATE_SHARE = 0.95  # latency runs: achieved / offered rate
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


def _entry(results: dict[str, Any], target: str) -> Optional[dict[str, Any]]:
    for section in ("targets", "blocking"):
        entry = (results.get(section) or {}).get(target)
        if entry is not None:
            return entry
    return None


# -- what a run really measured ------------------------------------------------------

def _errors(runs: list[dict[str, Any]]) -> Optional[str]:
    total = sum(r.get("complete") or 0 for r in runs)
    bad = sum((r.get("failed") or 0) + (r.get("non_2xx") or 0) for r in runs)
    if total and bad / total > MAX_ERROR_SHARE:
        return (f"not measured: {100 * bad / total:.0f}% of the requests failed or got an "
                "error status")
    return None


def keepalive_fair(entry: dict[str, Any], kind: str = "keepalive") -> Optional[str]:
    """Why this target's keep-alive runs do not measure keep-alive, or None."""
    runs = [r for r in entry["runs"].get(kind, []) if r.get("rps")]
    shares = [r["keepalive_share"] for r in runs if r.get("keepalive_share") is not None]
    if shares and min(shares) < MIN_REUSE:
        return (f"not measured: the server did not keep connections alive ("
                f"{100 * (1 - min(shares)):.0f}% of requests needed a new connection and "
                "handshake), so the number would count handshakes")
    return _errors(runs)


def newconn_fair(entry: dict[str, Any]) -> Optional[str]:
    """Why this target's new-connection runs are not one full handshake per request."""
    runs = [r for r in entry["runs"].get("newconn", []) if r.get("rps")]
    if any(r.get("resumed") for r in runs):
        return "not measured: TLS sessions were resumed (not full handshakes)"
    ratios = [r["handshakes_per_request"] for r in runs
              if r.get("handshakes_per_request") is not None]
    if ratios and min(ratios) < MIN_HANDSHAKES:
        return (f"not measured: the server kept connections open despite Connection: close "
                f"(only {100 * min(ratios):.0f}% of requests had their own handshake)")
    return _errors(runs)


def unmeasured(results: dict[str, Any], target: str, path: str) -> Optional[str]:
    """Why `path` ('keepalive.rps', 'rate.p99_ms', ...) has no number for `target`."""
    entry = _entry(results, target)
    if entry is None:
        return "not measured: not in this run"
    if entry.get("status") != "ok":
        return f"{entry.get('status')}: {entry.get('reason')}"
    kind = path.split(".")[0]
    if kind in ("keepalive", "rate", "blocking"):
        return keepalive_fair(entry, kind)
    if kind == "newconn":
        return newconn_fair(entry)
    return None


def metric(results: dict[str, Any], target: str, path: str) -> Optional[Stat]:
    """A metric by path: 'keepalive.rps', 'silent.ratio', 'idle.10000.fresh_ms';
    None when it was not measured (or not measured fairly: `unmeasured`)."""
    entry = _entry(results, target)
    if not entry or entry.get("status") != "ok" or unmeasured(results, target, path):
        return None
    parts = path.split(".")
    runs: Any = entry["runs"].get(parts[0], [])
    if parts[0] == "idle":
        runs = runs.get(parts[1], [])
    return stat([run.get(parts[-1]) for run in runs])


def ratio(results: dict[str, Any], path: str, other: str, ours: str = OURS
          ) -> Optional[float]:
    mine, theirs = metric(results, ours, path), metric(results, other, path)
    if mine is None or theirs is None or not theirs.median:
        return None
    return mine.median / theirs.median


def paired_ratios(results: dict[str, Any], path: str, other: str, ours: str = OURS
                  ) -> list[float]:
    """Repetition by repetition, ours over the other's (repetitions are interleaved,
    so run i of each ran minutes apart at most): how far the verdict would move if
    one repetition had been the whole measurement."""
    if metric(results, ours, path) is None or metric(results, other, path) is None:
        return []
    kind, field = path.split(".")[0], path.split(".")[-1]
    mine = [r.get(field) for r in _entry(results, ours)["runs"].get(kind, [])]
    theirs = [r.get(field) for r in _entry(results, other)["runs"].get(kind, [])]
    return [a / b for a, b in zip(mine, theirs) if a is not None and b]


# -- goals ---------------------------------------------------------------------------

Verdict = tuple[Optional[str], Optional[bool], str]


@dataclass(frozen=True)
class Goal:
    """One target from an issue, judged on the medians of one run."""

    group: str
    title: str
    need: str
    judge: Callable[[dict[str, Any]], Verdict]


def _missing_reason(results: dict[str, Any], path: str, *names: str) -> str:
    for name in names:
        why = unmeasured(results, name, path)
        if why:
            return f"{name}: {why}"
        if metric(results, name, path) is None:
            return f"{name}: no value"
    return "not measured"


def _ratio_goal(path: str, other: str, need: float, ours: str = OURS,
                higher_is_better: bool = True) -> Callable[[dict[str, Any]], Verdict]:
    def judge(results: dict[str, Any]) -> Verdict:
        value = ratio(results, path, other, ours)
        if value is None:
            return None, None, _missing_reason(results, path, ours, other)
        shown = f"{value:.2f}×"
        pairs = paired_ratios(results, path, other, ours)
        spread = (f"; repetition by repetition {min(pairs):.2f}–{max(pairs):.2f}×"
                  if len(pairs) > 1 else "")
        if higher_is_better:
            if value >= need:
                return shown, True, f"met, {100 * (value / need - 1):.0f}% to spare{spread}"
            return shown, False, (f"missed by {100 * (1 - value / need):.0f}%: {ours} needs "
                                  f"{100 * (need / value - 1):.0f}% more{spread}")
        if value <= need:
            return shown, True, "met" + (f", {100 * (1 - value / need):.0f}% lower"
                                         if value < need else "") + spread
        return shown, False, (f"missed: {100 * (value / need - 1):.0f}% higher than "
                              f"allowed{spread}")
    return judge


def _idle_goal(field: str, limit: float, unit: str, ours: str = OURS
               ) -> Callable[[dict[str, Any]], Verdict]:
    def judge(results: dict[str, Any]) -> Verdict:
        runs = _idle_runs(results, ours, 10000)
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


def _idle_runs(results: dict[str, Any], name: str, count: int
               ) -> Optional[list[dict[str, Any]]]:
    entry = results["targets"].get(name) or {}
    runs = entry.get("runs", {}).get("idle", {}).get(str(count))
    return runs or None


def _silent_goal(ours: str) -> Callable[[dict[str, Any]], Verdict]:
    def judge(results: dict[str, Any]) -> Verdict:
        value = metric(results, ours, "silent.ratio")
        if value is None:
            runs = (results["targets"].get(ours) or {}).get("runs", {}).get("silent", [])
            errors = sorted({r.get("silent_error") or r.get("error") or "" for r in runs}
                            - {""})
            return None, (False if errors else None), (f"missed: {errors[0]}" if errors
                                                       else "not measured")
        if value.median <= 1.10:
            return f"{value.median:.2f}×", True, "met"
        return f"{value.median:.2f}×", False, f"missed: {100 * (value.median - 1):.0f}% slower"
    return judge


def _blocking_goal(name: str, share: float) -> Callable[[dict[str, Any]], Verdict]:
    def judge(results: dict[str, Any]) -> Verdict:
        value = metric(results, name, "blocking.rps")
        ceiling = metric(results, name, "blocking.ceiling_rps")
        if value is None or ceiling is None:
            return None, None, _missing_reason(results, "blocking.rps", name)
        need = share * ceiling.median
        shown = f"{value.median:,.0f} req/s"
        if value.median >= need:
            return shown, True, f"met ({value.median / ceiling.median:.2f}× of the ceiling)"
        return shown, False, (f"missed: {value.median / ceiling.median:.2f}× of the "
                              f"{ceiling.median:,.0f} req/s ceiling")
    return judge


PEERS = "Goals against uWSGI, mod_wsgi and nginx (securewsgi, eventlet engine)"
PEERS_THREADS = "The same goals for the threads engine (securewsgi-threads)"
ENGINE = "Goals for the threads engine (securewsgi-threads vs securewsgi)"
EARLIER = "Earlier goals (securewsgi)"


def _peer_goals(group: str, ours: str) -> tuple[Goal, ...]:
    """The goals against the servers our users move to, for one of our targets."""
    return (
        Goal(group, "Keep-alive req/s vs uwsgi-https (uWSGI's HTTPS router)", "≥ 1.2×",
             _ratio_goal("keepalive.rps", "uwsgi-https", 1.2, ours=ours)),
        Goal(group, "Keep-alive req/s vs mod_wsgi (mod_wsgi-express)", "≥ 1.2×",
             _ratio_goal("keepalive.rps", "mod_wsgi", 1.2, ours=ours)),
        Goal(group, "New mTLS connections/s vs nginx", "≥ 1.0×",
             _ratio_goal("newconn.rps", "nginx", 1.0, ours=ours)),
        Goal(group, "New mTLS connections/s vs uwsgi-https", "≥ 1.2×",
             _ratio_goal("newconn.rps", "uwsgi-https", 1.2, ours=ours)),
        Goal(group, "New mTLS connections/s vs uwsgi-nginx", "≥ 1.2×",
             _ratio_goal("newconn.rps", "uwsgi-nginx", 1.2, ours=ours)),
        Goal(group, "p99 latency at the fixed rate vs uwsgi-https", "≤ 1.0×",
             _ratio_goal("rate.p99_ms", "uwsgi-https", 1.0, higher_is_better=False,
                         ours=ours)),
        Goal(group, "p99 latency at the fixed rate vs uwsgi-nginx", "≤ 1.0×",
             _ratio_goal("rate.p99_ms", "uwsgi-nginx", 1.0, higher_is_better=False,
                         ours=ours)),
    )


GOALS = (
    *_peer_goals(PEERS, OURS),
    *_peer_goals(PEERS_THREADS, THREADS),
    Goal(ENGINE, "Keep-alive req/s, threads vs eventlet engine", "≥ 0.9×",
         _ratio_goal("keepalive.rps", OURS, 0.9, ours=THREADS)),
    Goal(ENGINE, "New mTLS connections/s, threads vs eventlet engine", "≥ 0.9×",
         _ratio_goal("newconn.rps", OURS, 0.9, ours=THREADS)),
    Goal(ENGINE, "10,000 idle mTLS connections: fresh-client latency", "< 50 ms",
         _idle_goal("fresh_ms", 50, "ms", ours=THREADS)),
    Goal(ENGINE, "10,000 idle mTLS connections: RSS per held connection", "≤ 40 KiB",
         _idle_goal("rss_per_conn_kib", 40, "KiB", ours=THREADS)),
    Goal(ENGINE, "50 silent connections: fresh-client latency vs quiet", "≤ 1.10×",
         _silent_goal(THREADS)),
    Goal(ENGINE, "Blocking app, 32 clients, threads engine (no monkey-patching)",
         "≥ 0.9 × 160 req/s", _blocking_goal("blocking-threads", 0.9)),
    Goal(EARLIER, "Keep-alive req/s vs eventlet-raw", "≥ 1.2×",
         _ratio_goal("keepalive.rps", "eventlet-raw", 1.2)),
    Goal(EARLIER, "Keep-alive req/s vs gunicorn -k eventlet", "≥ 1.3×",
         _ratio_goal("keepalive.rps", "gunicorn-eventlet", 1.3)),
    Goal(EARLIER, "10,000 idle mTLS connections: fresh-client latency", "< 50 ms",
         _idle_goal("fresh_ms", 50, "ms")),
    Goal(EARLIER, "10,000 idle mTLS connections: RSS per held connection", "≤ 40 KiB",
         _idle_goal("rss_per_conn_kib", 40, "KiB")),
    Goal(EARLIER, "50 silent connections: fresh-client latency vs quiet", "≤ 1.10×",
         _silent_goal(OURS)),
)


def judge_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    judged = []
    for goal in GOALS:
        measured, met, verdict = goal.judge(results)
        judged.append({"group": goal.group, "goal": goal.title, "need": goal.need,
                       "measured": measured, "met": met, "verdict": verdict})
    return judged


# -- notes: what makes a number less than it seems -----------------------------------

WITH_TICKETS = {"nginx-tickets"}  # the one target meant to send them (METHOD)

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
        if "stateless" in str(check.get("session_tickets")) and name not in WITH_TICKETS:
            found.append(f"**{name} sent stateless session tickets** "
                         f"({check['session_tickets']}): its new-connection numbers include "
                         "their cost, which the other targets do not pay.")
        noise = []
        for kind, label in (("keepalive", "keep-alive"), ("newconn", "new-connection"),
                            ("rate", "fixed-rate")):
            found.extend(_run_notes(name, label, kind, entry["runs"].get(kind, []),
                                    server_cpu, client_cpu))
            others = [_other_load(r, server_cpu) for r in entry["runs"].get(kind, [])]
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
    if kind == "rate":
        short = [r for r in runs if r.get("rps") and r.get("offered_rps")
                 and r["rps"] < MIN_RATE_SHARE * r["offered_rps"]]
        if short:
            found.append(f"{name}: did not keep up with the fixed rate in {len(short)} run(s) "
                         f"(achieved {short[0]['rps']:,.0f} of {short[0]['offered_rps']:,.0f} "
                         "req/s): its latency is that of an overloaded server.")
        return found + [f"{name}, {label}: {e}" for e in
                        sorted({r["error"] for r in runs if r.get("error")})[:1]]
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
                     "(timers, Nagle/delayed ACK, locks, a small thread pool), not on CPU.")
    closed = sum(r.get("read_errors") or 0 for r in runs)
    if closed:
        found.append(f"{name}, {label}: the server closed connections after its answer "
                     "without a `Connection: close` header, so wrk noticed only when its next "
                     f"request failed ({closed:,} read errors); each request still had its own "
                     "connection and handshake (counted), and no request was lost.")
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
                                # mod_wsgi, bench/.venvs/gunicorn-eventlet and -gthread
    python -m bench             # full run (about an hour), rewrites this page
    python -m bench --quick     # smoke test for CI (under 3 minutes, no goals judged)

Useful options: ``--targets securewsgi,securewsgi-threads,nginx``, ``--repeat 5``,
``--duration 20``, ``--idle 1000,10000``, ``--rate 2000`` (the fixed rate of the
latency runs, instead of half the slowest target's capacity), ``--client ab`` or
``--client python`` (another load generator, for comparison), ``--no-profile``,
``--securewsgi-set server.max_connections=12000`` (try a setting; repeatable, shown on
the page), ``--render bench/results/FILE.json`` (redraw this page from a results file).

A run never installs anything: a target whose software is missing is skipped with
the command that installs it, and a target that fails to start is shown as "not
available" with the server's own error line. The one thing built on first use is
``bench/.build/wrkcert.so`` (from ``bench/wrkcert.c``; needs gcc and libssl-dev).

Each run writes ``bench/results/<timestamp>.json`` (every repetition's raw numbers),
py-spy profiles in ``bench/results/<timestamp>-profiles/``, this page and
``docs/source/benchmarks.png``. ``--quick`` writes its page next to its results file
and leaves this one alone.
"""

TOOLS = """\
.. list-table::
   :header-rows: 1

   * - measurement
     - tool
     - why this one
   * - keep-alive req/s, server CPU per request
     - ``wrk`` (C, HTTP/1.1), one thread on the load-generator CPU, {concurrency}
       connections, with the client certificate supplied by ``bench/wrkcert.c``
       (an ``LD_PRELOAD`` shim: wrk has no client-certificate option)
     - HTTP/1.1 keep-alive is what every client speaks. ``ab`` speaks HTTP/1.0, whose
       keep-alive uWSGI's HTTPS router does not honour: with ``ab`` every uWSGI
       "keep-alive" request was a new TLS connection (927 req/s on the earlier page).
       The shim counts wrk's connects and handshakes; a target whose keep-alive run
       needed new connections for more than {reuse_pct:.0f}% of its requests is shown as
       "not measured", not as a keep-alive number.
   * - new mutual-TLS connections/s, server CPU per connection
     - ``wrk`` as above, every request with ``Connection: close``
     - One client for both tests and every target: the same HTTP/1.1 request, the same
       OpenSSL client. wrk would resume the previous TLS session on each reconnect
       (its SSL object keeps the session); the shim drops it, counts handshakes and
       resumptions, and the harness checks that every request had its own full
       handshake (resumed: 0), which ``ab`` cannot show. ``ab`` without ``-k`` measures
       the same thing (also one full handshake per request) and stays available as
       ``--client ab``: side by side on nginx and securewsgi the two agreed within
       run-to-run noise, with wrk using more client CPU (it polls while a handshake
       waits on the server; a saturated load generator would be noted below). wrk's
       latency for this test leaves out the handshake (it times a request from when it
       is sent), so no latency is shown for it.
   * - p50/p99 latency at a fixed rate, server CPU per request at that rate
     - ``wrk`` as above, paced by ``bench/wrk_report.lua``'s ``delay()`` to one offered
       rate for every target: {rate_basis}
     - Throughput at saturation does not say what a user waits. wrk2 (open-loop) is not
       packaged by Debian; bench/loadgen.py (Python) can hold the rate, but measured
       against nginx its own overhead (about 0.9 ms median, against wrk's 0.1 ms) would
       hide the differences between servers. Closed-loop caveat: wrk times a request from
       when it is sent, so a request that waited for a free connection does not count
       that wait; with {concurrency} connections at half the slowest target's capacity
       connections are rarely all busy, and a target that cannot keep the rate is
       flagged.
   * - idle capacity, silent connections, fresh-client latency
     - ``bench/loadgen.py`` (asyncio)
     - Holding thousands of connections and timing single fresh clients needs a
       scriptable client, not a fast one.
   * - server CPU
     - ``/proc/PID/stat`` of every process of the target (utime + stime, and reaped
       children's), before and after each run, divided by the requests answered
     - The same for every target, whatever its process model (uWSGI's router and
       worker, nginx and uWSGI, Apache's processes and mod_wsgi's daemon are all
       counted).
   * - server CPU by component
     - ``perf record -e cpu-clock`` on every thread of every process of the target,
       during a separate keep-alive and a new-connection run (not the runs of the
       throughput table), grouped by shared object
     - Says where each target's CPU goes (OpenSSL, C library, Python, its own code,
       kernel) the same way for every target, which a Python profiler cannot do for
       nginx or for OpenSSL's time.
"""

METHOD = """\
* Every target serves the same app, ``bench/hello.py`` (13 bytes, with a
  Content-Length; nginx alone answers it itself, as the no-Python ceiling), over mutual
  TLS on 127.0.0.1, with one test PKI made by ``securewsgi-certs init`` (ECDSA P-256):
  a client certificate signed by the test CA is required at the handshake. Before
  measuring, the harness checks each target answers ``hello, world`` and refuses a
  client without a certificate. One process runs the app; access logs are on.
* **The same handshake work everywhere**: no TLS session tickets. securewsgi sends none
  in mutual mode by default (``tls.session_tickets: auto``); every other target is set
  the same way (nginx ``ssl_session_tickets off``, uWSGI ``ssl-option = 16384``,
  Apache ``SSLSessionTickets off``, ``num_tickets = 0`` in the Python servers). With a
  client certificate, the two tickets OpenSSL sends by default carry the session,
  certificate included, and cost about a third more CPU per new connection; leaving
  them on would flatter securewsgi's new-connection numbers. ``nginx-tickets`` is nginx
  with its default tickets, to show that cost.
* The server (all its processes) is pinned to CPU {server} and the load generator to
  CPU {client} (``taskset``). Repetitions are interleaved across targets (target order
  inside each repetition), so drift spreads over all of them. Each number is the
  **median of {repeat} repetition(s)**, with min–max in brackets; ratios are ratios of
  medians from this one run.
* **Keep-alive**: {concurrency} connections for {duration:g} s after a {warmup:g} s
  warm-up. **New connections**: {concurrency} at a time for {duration:g} s, each
  request a new TCP connection and full mutual-TLS handshake.
* **Latency at a fixed rate**: a fresh server per repetition, {concurrency} keep-alive
  connections, the same offered rate for every target ({rate}), {duration:g} s after
  a {warmup:g} s warm-up at that rate. p50/p99 from wrk's histogram (microsecond
  resolution).
* **Server CPU per request**: the server's CPU seconds during a run divided by the
  requests answered, in µs. At saturation it is about 1/throughput; at the fixed rate
  it is what a request costs when the server is not saturated.
* **Blocking app**: ``bench/blocking.py`` sleeps 0.2 s per request; {blocking} clients
  (wrk, keep-alive, {duration:g} s) against securewsgi with the eventlet engine
  (``monkey_patch`` true and false) and with the threads engine (64 threads, no
  monkey-patching). The ceiling is {blocking} / 0.2 s = {ceiling:g} req/s.
* **Idle capacity**: bench/loadgen.py opens N connections (each completes the handshake
  and one keep-alive GET, so the server has verified the certificate), holds them, and
  the harness reads the server's RSS (VmRSS, summed over its processes) before and
  while they are held; then a fresh client times {samples} GETs, each on a new
  connection (timeout {fresh_timeout:g} s). Every idle run uses a freshly started server.
* **Silent connections**: the fresh-client latency (median of {samples}) on a quiet
  server, then again while {silent} TCP connections are open that never send a byte.
* **No 2-worker row**: this machine has 2 CPUs, one for the server and one for the load
  generator. Two workers on separate CPUs would share a CPU with the load generator,
  and two workers on one CPU show overhead, not scaling; so this page shows neither.
"""


def render(results: dict[str, Any], chart_name: Optional[str]) -> str:
    plan = results["plan"]
    quick = results["mode"] == "quick"
    lines = [*heading("Benchmarks", "="), "How fast is securewsgi, and how does it compare "
             "with the servers its users run or move to (uWSGI, Apache mod_wsgi, nginx)?",
             "", ".. contents::", "   :local:", "",
             *heading("How to run", "-"), *HOW_TO_RUN.splitlines(), ""]
    lines += _run_summary(results, quick)
    lines += heading("Which tool measured what, and why", "-")
    tools = TOOLS.format(concurrency=plan["concurrency"], reuse_pct=100 * (1 - MIN_REUSE),
                         rate_basis=_rate_text(results))
    lines += [*tools.splitlines(), ""]
    lines += _goals_section(results, quick)
    lines += _results_section(results, chart_name)
    lines += _profile_section(results)
    lines += heading("Method", "-")
    blocking = plan.get("blocking_clients", 32)
    lines += METHOD.format(server=plan["server_cpus"], client=plan["client_cpus"],
                           repeat=plan["repeat"], concurrency=plan["concurrency"],
                           duration=plan["duration"], warmup=plan["warmup"],
                           samples=plan["fresh_samples"], fresh_timeout=plan["fresh_timeout"],
                           silent=plan["silent_count"], rate=_rate_text(results),
                           blocking=blocking, ceiling=blocking / 0.2).splitlines()
    lines += ["", *_targets_section(results), *_commands_section(results)]
    return "\n".join(lines).rstrip() + "\n"


def _rate_text(results: dict[str, Any]) -> str:
    rate = results.get("rate") or {}
    if not rate.get("rps"):
        return rate.get("basis") or "not measured"
    return f"{rate['rps']:,.0f} req/s, {rate['basis']}"


def _run_summary(results: dict[str, Any], quick: bool) -> list[str]:
    machine = results["machine"]
    tools = results["tools"]
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
        f"* Python {machine['python']}, {machine['openssl']}; load generator: "
        f"{results['plan']['client']} ({tools.get('wrk', '-')}; {tools.get('ab', '-')}); "
        f"{tools.get('py-spy', '-')}",
    ]
    overrides = results.get("securewsgi_overrides")
    if overrides:
        lines.append("* securewsgi settings changed with ``--securewsgi-set``: " + ", ".join(
            f"``{key}: {value}``" for key, value in overrides.items()))
    return [*lines, ""]


def _goals_section(results: dict[str, Any], quick: bool) -> list[str]:
    lines = heading("Goals from the issues", "-")
    if quick:
        lines += ["Not judged in a quick run (ratios shown for information).", ""]
    else:
        lines += ["Each ratio is securewsgi's median over the other target's median, from "
                  "this one run; for latency, lower is better.", ""]
    judged = judge_goals(results)
    for group in dict.fromkeys(g["group"] for g in judged):
        rows = []
        for goal in (g for g in judged if g["group"] == group):
            if quick:
                status, verdict = "", "–"
            else:
                status = {True: "**met**", False: "**not met**"}.get(goal["met"], "")
                verdict = goal["verdict"]
            rows.append([goal["goal"], goal["need"], goal["measured"] or "–", status, verdict])
        lines += [f"**{group}**", "", *table(["goal", "needs", "measured (median)", "",
                                              "verdict"], rows)]
    return lines


def _names(results: dict[str, Any]) -> list[str]:
    return [n for n, e in results["targets"].items() if e.get("status") == "ok"]


def _cell(results: dict[str, Any], name: str, path: str,
          fmt: Callable[[float], str] = number) -> str:
    """A number, or "not measured: why"."""
    why = unmeasured(results, name, path)
    if why:
        return why
    return cell(metric(results, name, path), fmt)


def _results_section(results: dict[str, Any], chart_name: Optional[str]) -> list[str]:
    lines = heading("Results", "-")
    if chart_name:
        lines += [f".. image:: {chart_name}", "   :alt: keep-alive req/s, new mTLS "
                  "connections/s, p99 latency at the fixed rate and RSS per idle connection "
                  "per target", ""]
    names = _names(results)
    lines += heading("Throughput and server CPU", "~")
    lines += ["*µs/req* is the server's CPU time (all its processes) per request answered; "
              "*reused* is the share of keep-alive requests that needed no new connection "
              "beyond wrk's first one per connection slot (handshakes counted by the shim).",
              ""]
    rows = []
    for name in names:
        rows.append([name, _cell(results, name, "keepalive.rps"),
                     _cell(results, name, "keepalive.server_cpu_us"),
                     _cell(results, name, "keepalive.keepalive_share", two_decimals),
                     _cell(results, name, "newconn.rps"),
                     _cell(results, name, "newconn.server_cpu_us"),
                     f"{cell(metric(results, name, 'keepalive.server_cpu_pct'))} / "
                     f"{cell(metric(results, name, 'keepalive.client_cpu_pct'))}",
                     f"{cell(metric(results, name, 'newconn.server_cpu_pct'))} / "
                     f"{cell(metric(results, name, 'newconn.client_cpu_pct'))}"])
    lines += table(["target", "keep-alive req/s", "keep-alive µs/req (server CPU)",
                    "reused", "new mTLS conn/s", "µs/conn (server CPU)",
                    "CPU % server / client (keep-alive)",
                    "CPU % server / client (new)"], rows)
    lines += _rate_table(results, names)
    lines += _ratio_table(results, names)
    lines += _blocking_table(results)
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


def _rate_table(results: dict[str, Any], names: list[str]) -> list[str]:
    lines = heading("Latency at a fixed rate", "~")
    rate = results.get("rate") or {}
    if not rate.get("rps"):
        return [*lines, f"Not measured: {rate.get('basis') or 'no rate'}.", ""]
    lines += [f"Every target offered the same **{rate['rps']:,.0f} req/s** ({rate['basis']}) "
              f"on {results['plan']['concurrency']} keep-alive connections: what a user "
              "waits when the server is not saturated.", ""]
    rows = [[name, _cell(results, name, "rate.rps"), _cell(results, name, "rate.p50_ms"),
             _cell(results, name, "rate.p99_ms"), _cell(results, name, "rate.p999_ms"),
             _cell(results, name, "rate.server_cpu_us"),
             _cell(results, name, "rate.server_cpu_pct")] for name in names]
    return lines + table(["target", "achieved req/s", "p50 ms", "p99 ms", "p99.9 ms",
                          "µs/req (server CPU)", "server CPU %"], rows)


RATIO_COLUMNS = (("keepalive.rps", "keep-alive req/s"), ("newconn.rps", "new mTLS conn/s"),
                 ("rate.p99_ms", "p99 at the fixed rate (lower is better)"),
                 ("keepalive.server_cpu_us", "µs/req keep-alive (lower is better)"),
                 ("rate.server_cpu_us", "µs/req at the fixed rate (lower is better)"))


def _ratio_table(results: dict[str, Any], names: list[str]) -> list[str]:
    rows = []
    for ours in (OURS, THREADS):
        if ours not in names:
            continue
        for other in (n for n in names if n != ours):
            values = [ratio(results, path, other, ours) for path, _ in RATIO_COLUMNS]
            rows.append([f"{ours} / {other}",
                         *(f"{v:.2f}×" if v is not None else "–" for v in values)])
    if not rows:
        return []
    return [*heading("Ratios (medians of this run)", "~"),
            *table(["", *(label for _, label in RATIO_COLUMNS)], rows)]


def _blocking_table(results: dict[str, Any]) -> list[str]:
    entries = results.get("blocking") or {}
    if not entries:
        return []
    lines = heading("Blocking app (time.sleep(0.2) per request)", "~")
    clients = results["plan"].get("blocking_clients", 32)
    lines += [f"{clients} keep-alive clients; the ceiling is {clients} / 0.2 s = "
              f"{clients / 0.2:g} req/s (the threads engine's 64 threads would allow 320). "
              "Without monkey-patching, eventlet runs the sleep on its only OS thread: "
              "one request at a time.", ""]
    rows = []
    for name, entry in entries.items():
        if entry.get("status") != "ok":
            rows.append([name, entry.get("title", ""), f"{entry['status']}: {entry['reason']}",
                         "–", "–"])
            continue
        rps = metric(results, name, "blocking.rps")
        rows.append([name, entry["title"], _cell(results, name, "blocking.rps"),
                     f"{rps.median / (clients / 0.2):.2f}" if rps else "–",
                     _cell(results, name, "blocking.p99_ms")])
    return lines + table(["run", "engine", "req/s", "share of the ceiling", "p99 ms"], rows)


def _silent_cell(results: dict[str, Any], name: str) -> str:
    value = metric(results, name, "silent.silent_ms")
    if value is not None:
        return cell(value)
    runs = results["targets"][name]["runs"]["silent"]
    errors = sorted({r.get("silent_error") or r.get("error") or "–" for r in runs})
    return errors[0]


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
    profiled = [(name, entry["profile"]) for name, entry in results["targets"].items()
                if entry.get("profile")]
    if not profiled and not any(e.get("components") for e in results["targets"].values()):
        return []
    lines = heading("Where the CPU goes", "-")
    client = results.get("plan", {}).get("client") or "the load generator"
    lines += [
        "Server CPU per request, split into *user* time (the process's own code: Python, "
        "OpenSSL, C libraries) and *system* time (the kernel: TCP, epoll, the log file), "
        "from ``/proc`` (the runs of the throughput table, medians).", ""]
    lines += _cpu_split_table(results)
    lines += _components_section(results)
    if not profiled:
        return lines
    lines += heading("securewsgi's Python time, by layer", "~")
    lines += [
        f"py-spy samples of the threads holding the GIL while {client} drives the "
        f"server, which is the time spent running Python. OpenSSL's work and system "
        f"calls run with the GIL released, so they are in the user or system time but "
        f"not in the samples. *Layer* groups the samples by the file of the function "
        f"that was running (C functions it called count for it, a regular expression "
        f"for the parser); the µs column is the layer's share of the Python time per "
        f"request.", ""]
    for name, profiles in profiled:
        for kind, label in (("keepalive", "keep-alive requests"),
                            ("newconn", "new connections")):
            data = profiles.get(kind) or {}
            lines += [f"**{name}, {label}**", ""]
            if data.get("error"):
                lines += [f"Not profiled: {data['error']}", ""]
                continue
            lines += _profile_summary(data)
    return lines


def _cpu_split_table(results: dict[str, Any]) -> list[str]:
    """Median user and system µs per keep-alive request and per new connection for
    every target (the runs of the throughput table)."""
    rows = []
    for name, entry in results["targets"].items():
        cells = [name]
        for kind in ("keepalive", "newconn"):
            runs = entry.get("runs", {}).get(kind) or []
            user = stat([r.get("server_user_us") for r in runs])
            system = stat([r.get("server_system_us") for r in runs])
            cells += [f"{user.median:,.1f}" if user else "–",
                      f"{system.median:,.1f}" if system else "–"]
        if any(c != "–" for c in cells[1:]):
            rows.append(cells)
    if not rows:
        return []
    return table(["target", "keep-alive: user µs", "system µs", "new connection: user µs",
                  "system µs"], rows)


COMPONENT_ORDER = ("OpenSSL", "C library", "Python", "server's own code", "kernel")
COMPONENT_KINDS = (("newconn", "per new mutual-TLS connection"),
                   ("keepalive", "per keep-alive request"))


def _components_section(results: dict[str, Any]) -> list[str]:
    """Every target's CPU by component (perf), one table per load."""
    measured = {name: entry["components"] for name, entry in results["targets"].items()
                if entry.get("components")}
    if not measured:
        return []
    lines = heading("CPU by component, every target", "~")
    lines += [
        "perf samples (``cpu-clock``, 999 per second) of every thread of every process "
        "of the target while wrk drives it, grouped by the shared object that was "
        "running: *OpenSSL* (libcrypto, libssl), the *C library* (libc: malloc, memcpy, "
        "locks; much of it called by OpenSSL), *Python* (the interpreter and its "
        "extension modules, mod_wsgi), the *server's own code* (nginx, uwsgi, apache2), "
        "and the *kernel* (TCP, epoll, scheduling). µs per request or connection, from "
        "the samples over the requests answered while sampling; *total (/proc)* is the "
        "same run's CPU from ``/proc``, for comparison.", ""]
    for kind, label in COMPONENT_KINDS:
        rows = []
        for name, data in measured.items():
            one = data.get(kind) or {}
            if one.get("error"):
                rows.append([name, *["–"] * len(COMPONENT_ORDER), "–",
                             f"not measured: {one['error']}"])
                continue
            us = one.get("us") or {}
            cells = [f"{us.get(c, 0):,.1f}" for c in COMPONENT_ORDER]
            total = sum(us.values())
            proc = one.get("server_cpu_us")
            rows.append([name, *cells, f"{total:,.1f}", f"{proc:,.1f}" if proc else "–"])
        lines += [f"**{label[0].upper()}{label[1:]}** (µs)", ""]
        lines += table(["target", *COMPONENT_ORDER, "total (perf)", "total (/proc)"], rows)
    lines += _handshake_floor(measured)
    return lines


def _handshake_floor(measured: dict[str, Any]) -> list[str]:
    """The sentence the new-connection goal against nginx needs: what OpenSSL alone
    costs securewsgi per connection, next to nginx's whole connection."""
    nginx = (measured.get("nginx") or {}).get("newconn") or {}
    if not nginx.get("us"):
        return []
    nginx_total = sum(nginx["us"].values())
    lines = []
    for name in ("securewsgi", "securewsgi-threads"):
        ours = (measured.get(name) or {}).get("newconn") or {}
        if not ours.get("us"):
            continue
        crypto = ours["us"].get("OpenSSL", 0) + ours["us"].get("C library", 0)
        rest = sum(ours["us"].values()) - crypto
        lines.append(
            f"* {name}: OpenSSL and the C library {crypto:,.0f} µs per new connection "
            f"({100 * crypto / nginx_total:.0f}% of nginx's whole connection, "
            f"{nginx_total:,.0f} µs); Python and the kernel {rest:,.0f} µs on top.")
    return (["Against nginx's handshake rate:", "", *lines, ""]) if lines else []


def _profile_summary(data: dict[str, Any]) -> list[str]:
    busy = 100 * data["samples"] / data["expected_samples"] if data.get(
        "expected_samples") else 0
    python_us = data.get("python_us")
    lines = [f"{data['samples']:,} samples with the GIL held ({busy:.0f}% of wall time)"
             + (f"; {data['rps']:,.0f} req/s during the sampling, so about "
                f"{python_us:,.1f} µs of Python per request (server CPU "
                f"{data.get('server_cpu_us') or 0:,.1f} µs: user "
                f"{data.get('server_user_us') or 0:,.1f}, system "
                f"{data.get('server_system_us') or 0:,.1f})" if python_us else "") + ".",
             ""]
    if data.get("layers"):
        rows = [[layer, f"{share}",
                 f"{share * python_us / 100:,.1f}" if python_us else "–"]
                for layer, share in data["layers"]]
        lines += table(["layer", "% of Python time", "µs per request"], rows)
    rows = [[f"``{s[0]}``", f"{s[1]}", f"``{t[0]}``", f"{t[1]}"]
            for s, t in zip(data["self"][:12], data["inclusive"][:12])]
    lines += table(["self", "%", "total", "%"], rows)
    return lines


def _targets_section(results: dict[str, Any]) -> list[str]:
    lines = heading("Targets and versions", "-")
    rows = []
    for section in ("targets", "blocking"):
        for name, entry in (results.get(section) or {}).items():
            check = entry.get("check") or {}
            tls = f"{check.get('tls_version')} {check.get('cipher')}" if check else "–"
            enforced = {True: "yes", False: "**no**"}.get(check.get("mtls_enforced"), "–")
            rows.append([name, entry.get("version") or "–", entry["notes"], tls, enforced,
                         check.get("session_tickets") or "–"])
    lines += table(["target", "version", "configuration", "negotiated", "cert required",
                    "session tickets"], rows)
    return lines


def _commands_section(results: dict[str, Any]) -> list[str]:
    lines = heading("Exact commands", "-")
    lines += ["``$BENCH_TMP`` is the run's temporary directory (PKI, configs, logs); paths "
              "are relative to the repository root; PORT, N, RATE and PID change per run.",
              ""]
    for label, command in results.get("commands", {}).items():
        lines += [f"{label}:", "", *literal(command)]
    for section in ("targets", "blocking"):
        for name, entry in (results.get(section) or {}).items():
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
    rate = (results.get("rate") or {}).get("rps")
    panels = [("keepalive.rps", "keep-alive req/s (wrk, HTTP/1.1)"),
              ("newconn.rps", "new mTLS connections/s"),
              ("rate.p99_ms", f"p99 ms at {rate:,.0f} req/s (lower is better)" if rate
               else "p99 ms at a fixed rate"),
              (f"idle.{largest}.rss_per_conn_kib", f"KiB RSS per idle connection ({largest:,})")]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.4))
    for axis, (path_key, title) in zip(axes.flat, panels):
        stats = [metric(results, name, path_key) for name in names]
        medians = [s.median if s else 0 for s in stats]
        errors = [[s.median - s.low if s else 0 for s in stats],
                  [s.high - s.median if s else 0 for s in stats]]
        colors = ["#c0392b" if n.startswith(OURS) else "#7f8c8d" for n in names]
        bars = axis.bar(range(len(names)), medians, yerr=errors, color=colors, capsize=3)
        labels = [number(s.median) if s else "not\nmeasured" for s in stats]
        if path_key.startswith("idle."):
            labels = [_held_label(results, name, largest, label)
                      for name, label in zip(names, labels)]
        axis.bar_label(bars, labels=labels, fontsize=7, padding=2)
        measured = [m for m in medians if m]
        if measured and max(measured) > 8 * min(measured):
            axis.set_yscale("log")  # nginx is an order of magnitude above the rest
            axis.set_ylim(bottom=min(measured) / 3, top=max(measured) * 4)
            title += " (log scale)"
        else:
            axis.margins(y=0.2)  # room for the labels
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{results['mode']} run {results['started']}: median of "
                    f"{results['plan']['repeat']}, min–max whiskers; server on one CPU, load "
                    "generator on the other", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
