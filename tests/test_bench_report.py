"""The benchmark page's arithmetic (bench/report.py, bench/wrk.py): ratios of medians,
goal verdicts, and the rules that turn a run which measured something else into
"not measured". No server is started."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, wrk


def _run(rps: float, **extra: Any) -> dict[str, Any]:
    return {"rps": rps, "complete": int(rps * 10), "failed": 0, "non_2xx": 0, **extra}


def _target(keepalive: list[dict[str, Any]], newconn: list[dict[str, Any]] = (),
            rate: list[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"status": "ok", "runs": {"keepalive": list(keepalive), "newconn": list(newconn),
                                     "rate": list(rate), "silent": [], "idle": {},
                                     "blocking": []}}


def _results(**targets: dict[str, Any]) -> dict[str, Any]:
    return {"targets": targets, "plan": {"server_cpus": "0", "client_cpus": "1"}}


def test_ratio_is_of_medians() -> None:
    results = _results(
        securewsgi=_target([_run(100), _run(300), _run(200)]),
        **{"uwsgi-https": _target([_run(50), _run(100), _run(400)])})
    assert report.ratio(results, "keepalive.rps", "uwsgi-https") == 2.0


def test_goal_verdicts_both_directions() -> None:
    results = _results(
        securewsgi=_target([_run(110)], rate=[_run(50, p99_ms=4.0)]),
        **{"uwsgi-https": _target([_run(100)], rate=[_run(50, p99_ms=5.0)])})
    measured, met, verdict = report._ratio_goal("keepalive.rps", "uwsgi-https", 1.2)(results)
    assert (measured, met) == ("1.10×", False)
    assert "missed by 8%" in verdict and "9% more" in verdict
    measured, met, _ = report._ratio_goal("rate.p99_ms", "uwsgi-https", 1.0,
                                          higher_is_better=False)(results)
    assert (measured, met) == ("0.80×", True)


def test_keepalive_without_reuse_is_not_measured() -> None:
    results = _results(
        securewsgi=_target([_run(1000, keepalive_share=1.0)]),
        uwsgi=_target([_run(900, keepalive_share=0.0)]))
    assert report.metric(results, "uwsgi", "keepalive.rps") is None
    assert report.unmeasured(results, "uwsgi", "keepalive.rps").startswith("not measured")
    measured, met, verdict = report._ratio_goal("keepalive.rps", "uwsgi", 1.2)(results)
    assert measured is None and met is None and "did not keep connections alive" in verdict


def test_resumed_or_shared_connections_are_not_new_connections() -> None:
    resumed = _target([], newconn=[_run(500, resumed=3, handshakes_per_request=1.0)])
    shared = _target([], newconn=[_run(500, resumed=0, handshakes_per_request=0.5)])
    fine = _target([], newconn=[_run(500, resumed=0, handshakes_per_request=1.01)])
    results = _results(a=resumed, b=shared, c=fine)
    assert "resumed" in report.unmeasured(results, "a", "newconn.rps")
    assert "despite Connection: close" in report.unmeasured(results, "b", "newconn.rps")
    assert report.metric(results, "c", "newconn.rps").median == 500


def test_error_responses_are_not_measured() -> None:
    results = _results(x=_target([_run(100, non_2xx=500, keepalive_share=1.0)]))
    assert "error status" in report.unmeasured(results, "x", "keepalive.rps")


def test_wrk_parse() -> None:
    stdout = ('Running 10s test\nWRKJSON {"requests": 20000, "duration_us": 2000000, '
              '"bytes": 1, "errors": {"connect": 0, "read": 2, "write": 0, "status": 0, '
              '"timeout": 0}, "mean_us": 900.5, "p50_us": 800, "p90_us": 1500, '
              '"p99_us": 4000, "p999_us": 9000, "max_us": 12000, "rate": 0}\n')
    stderr = "wrkcert: connects=51 handshakes=50 resumed=0\n"
    result = wrk.parse(stdout, stderr, 50)
    assert result["rps"] == 10000.0
    assert result["p99_ms"] == 4.0 and result["p50_ms"] == 0.8
    assert result["connections"] == 50  # wrk's start-up probe connect left out
    assert result["reconnects"] == 0 and result["keepalive_share"] == 1.0
    churned = wrk.parse(stdout, "wrkcert: connects=2051 handshakes=2050 resumed=0\n", 50)
    assert churned["reconnects"] == 2000 and churned["keepalive_share"] == 0.9
    assert result["failed"] == 2 and "offered_rps" not in result


def test_profile_layers_group_python_time_by_file() -> None:
    """py-spy's collapsed stacks become shares per layer of the server, counted by the
    innermost frame (where the GIL holder was), and the page shows them in µs."""
    from bench import measure

    raw = "\n".join([
        "_work (securewsgi/engines/threads.py:154);handle (securewsgi/http11.py:225);"
        "_parse_head (securewsgi/http11.py:462) 6",
        "_work (securewsgi/engines/threads.py:154);_release (securewsgi/engines/"
        "threads.py:222) 2",
        "_work (securewsgi/engines/threads.py:154);handle (securewsgi/http11.py:225);"
        "send (stdlib ssl.py:1236) 1",
        "_work (securewsgi/engines/threads.py:154);app (bench/hello.py:14) 1",
    ])
    summary = measure.summarize_profile(raw)
    layers = dict(summary["layers"])
    assert summary["samples"] == 10
    assert layers[measure.layer_of("x (securewsgi/http11.py:1)")] == 60.0
    assert layers[measure.layer_of("x (securewsgi/engines/threads.py:1)")] == 20.0
    assert layers[measure.layer_of("x (stdlib ssl.py:1)")] == 10.0
    assert layers[measure.layer_of("x (bench/hello.py:1)")] == 10.0
    assert len({measure.layer_of(f"x ({where})") for where in (
        "securewsgi/http11.py:1", "securewsgi/engines/threads.py:1", "stdlib ssl.py:1",
        "bench/hello.py:1")}) == 4
    summary.update(expected_samples=20, python_us=30.0, rps=1000.0, server_cpu_us=50.0,
                   server_user_us=40.0, server_system_us=10.0)
    text = "\n".join(report._profile_summary(summary))
    assert "about 30.0 µs of Python per request" in text
    assert "18.0" in text  # the protocol's 60% of 30 µs


def test_perf_components_group_samples_by_shared_object() -> None:
    """perf's per-DSO sample counts become OpenSSL / C library / Python / own code /
    kernel, and the page turns them into µs per connection for every target."""
    from bench import measure

    perf_report = "\n".join([
        "# Samples: 3K of event 'cpu-clock'",
        "#",
        "          1200  libcrypto.so.3",
        "           100  libssl.so.3",
        "           300  libc.so.6",
        "           400  libpython3.11.so.1.0",
        "            50  _ssl.cpython-311-x86_64-linux-gnu.so",
        "           150  [kernel.kallsyms]",
        "            25  nginx",
        "",
    ])
    counts = measure.summarize_perf(perf_report)
    assert counts == {"OpenSSL": 1300, "C library": 300, "Python": 450, "kernel": 150,
                      measure.OWN_CODE: 25}
    assert measure.component_of("mod_wsgi-py311.cpython-311-x86_64-linux-gnu.so") == "Python"
    assert measure.component_of("uwsgi") == measure.OWN_CODE

    def entry(us: dict[str, float]) -> dict[str, Any]:
        return {"components": {"newconn": {"us": us, "server_cpu_us": sum(us.values())},
                               "keepalive": {"error": "perf not installed"}},
                **_target([])}

    results = _results(securewsgi=entry({"OpenSSL": 1300.0, "C library": 300.0,
                                         "Python": 300.0, "kernel": 120.0}),
                       nginx=entry({"OpenSSL": 1200.0, "C library": 280.0, "kernel": 70.0,
                                    measure.OWN_CODE: 50.0}))
    text = "\n".join(report._components_section(results))
    assert "not measured: perf not installed" in text
    assert "1,300.0" in text and "2,020.0" in text  # OpenSSL cell, our total
    # OpenSSL + C library: 1,600 µs, 100% of nginx's whole 1,600 µs connection
    assert "OpenSSL and the C library 1,600 µs per new connection (100% of nginx's" in text
    assert "Python and the kernel 420 µs on top" in text


def test_verdict_shows_the_ratio_repetition_by_repetition() -> None:
    """The median decides; the verdict also says how far single repetitions (run i of
    each target, interleaved) would have moved it."""
    results = _results(
        securewsgi=_target([_run(120), _run(130), _run(140)]),
        **{"uwsgi-https": _target([_run(100), _run(140), _run(100)])})
    assert [round(r, 2) for r in report.paired_ratios(results, "keepalive.rps",
                                                        "uwsgi-https")] == [1.2, 0.93, 1.4]
    measured, met, verdict = report._ratio_goal("keepalive.rps", "uwsgi-https", 1.2)(results)
    assert (measured, met) == ("1.30×", True)
    assert verdict.endswith("repetition by repetition 0.93–1.40×")


def test_a_target_sending_stateless_tickets_is_called_out() -> None:
    """Every target should do the same handshake work (no stateless session tickets);
    one that did not is named on the page, except nginx-tickets, which is there to
    show their cost."""
    def checked(tickets: str) -> dict[str, Any]:
        return {**_target([_run(100)]), "check": {"mtls_enforced": True,
                                                 "session_tickets": tickets}}

    results = _results(**{"uwsgi-https": checked("2 stateless (697 bytes)"),
                          "nginx": checked("2 stateful (57 bytes)"),
                          "nginx-tickets": checked("2 stateless (697 bytes)"),
                          "securewsgi": checked("none")})
    found = " ".join(report.notes(results))
    assert "uwsgi-https sent stateless session tickets" in found
    assert "nginx-tickets sent" not in found and "**nginx sent" not in found
