"""A small mutual-TLS HTTP/1.1 client for what wrk cannot measure.

wrk (C, bench/wrk.py) drives the throughput and latency runs; this asyncio client does
the rest:

* ``probe``  one GET on a new connection (with or without a client certificate), to
  check that a target is up, answers the right body and really requires a certificate;
* ``idle``   open N mutual-TLS connections (each completes its handshake and one
  keep-alive GET, so the *server* has verified the certificate too), hold them, tell
  the harness (one JSON line on stdout), wait for its go (a line on stdin), then time
  fresh clients and count how many held connections are still open;
* ``silent`` time fresh clients on a quiet server, open M TCP connections that send
  nothing, time fresh clients again;
* ``load``   HTTP/1.1 keep-alive (or one request per connection) throughput and
  latency with C connections: the fallback when wrk is not installed. Python is
  slower than the fastest servers here, so its numbers are only valid below its
  own ceiling (the harness reports its CPU use next to each run).

Every connection goes to the address given (the harness passes 127.0.0.1 only), every
loop is bounded by a count and a deadline, and the process exits by itself.
Output is JSON on stdout; the harness runs it as ``python -m bench.loadgen MODE ...``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import ssl
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: securewsgi-bench\r\n\r\n"
MAX_HEADER_BYTES = 16384


@dataclass(frozen=True)
class Peer:
    """Where to connect and with which credentials."""

    host: str
    port: int
    context: ssl.SSLContext
    server_hostname: str = "localhost"


@dataclass
class Response:
    status: int
    body: bytes
    keep_alive: bool


def client_context(ca: str, cert: Optional[str], key: Optional[str]) -> ssl.SSLContext:
    """A client context that verifies the server and presents `cert` when given.

    A new context per process and no session objects: every connection is a full
    handshake, as the benchmark's "new connection" numbers promise.
    """
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one HTTP/1.x response with a Content-Length (all targets send one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("response header too large")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return Response(int(status), body, keep_alive)


async def open_connection(peer: Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(peer.host, peer.port, ssl=peer.context,
                                         server_hostname=peer.server_hostname)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
    writer.write(REQUEST)
    await writer.drain()
    return await read_response(reader)


def close(writer: asyncio.StreamWriter) -> None:
    """Close without waiting for the peer's close_notify (some servers never send it)."""
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def fresh_request(peer: Peer, timeout: float) -> tuple[float, Response]:
    """Seconds for connect + full handshake + one GET on a brand-new connection."""
    writers: list[asyncio.StreamWriter] = []

    async def exchange() -> Response:
        reader, writer = await open_connection(peer)
        writers.append(writer)
        return await get(reader, writer)

    started = time.perf_counter()
    try:
        response = await asyncio.wait_for(exchange(), timeout)
        return time.perf_counter() - started, response
    finally:
        for writer in writers:
            close(writer)


async def fresh_latencies(peer: Peer, samples: int, timeout: float) -> dict[str, Any]:
    """Median latency of `samples` fresh clients, one after the other.

    Stops at the first failure: a server that made one fresh client wait `timeout`
    seconds will make the next one wait too, and each try leaves another connection
    in its backlog.
    """
    latencies: list[float] = []
    for _ in range(samples):
        try:
            seconds, response = await fresh_request(peer, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return _latency_summary(latencies, f"fresh client timed out after {timeout:g}s")
        except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError) as exc:
            return _latency_summary(latencies, f"fresh client failed: {describe(exc)}")
        if response.status != 200:
            return _latency_summary(latencies, f"fresh client got HTTP {response.status}")
        latencies.append(seconds)
    return _latency_summary(latencies, None)


def _latency_summary(latencies: list[float], error: Optional[str]) -> dict[str, Any]:
    return {
        "ms": round(statistics.median(latencies) * 1000, 3) if latencies and not error else None,
        "samples_ms": [round(s * 1000, 3) for s in latencies],
        "error": error,
    }


def describe(exc: BaseException) -> str:
    """One line for an exception, e.g. 'SSLError: tlsv13 alert certificate required'."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__}: {exc.reason.lower().replace('_', ' ')}"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}"


# -- probe ---------------------------------------------------------------------------

async def probe(peer: Peer, timeout: float) -> dict[str, Any]:
    """One GET on a new connection: status, body, keep-alive and the TLS parameters."""
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(open_connection(peer), timeout)
        response = await asyncio.wait_for(get(reader, writer), timeout)
        tls = writer.get_extra_info("ssl_object")
        return {
            "ok": True, "status": response.status, "body": response.body.decode("latin-1"),
            "keep_alive": response.keep_alive, "tls_version": tls.version(),
            "cipher": tls.cipher()[0], "ms": round((time.perf_counter() - started) * 1000, 3),
        }
    except (asyncio.TimeoutError, TimeoutError):
        return {"ok": False, "error": f"no answer within {timeout:g}s"}
    except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError) as exc:
        return {"ok": False, "error": describe(exc)}
    finally:
        if writer is not None:
            close(writer)


# -- idle ----------------------------------------------------------------------------

@dataclass
class HeldConnections:
    """The connections the idle test holds open, and why the others failed."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    readers: list[asyncio.StreamReader] = field(default_factory=list)
    failed: int = 0
    first_error: Optional[str] = None
    gave_up: Optional[str] = None

    def still_open(self) -> int:
        return sum(1 for reader in self.readers if not reader.at_eof())

    def close_all(self) -> None:
        for writer in self.writers:
            close(writer)


async def open_held(peer: Peer, count: int, parallel: int, timeout: float,
                    deadline: float, give_up_after: int) -> HeldConnections:
    """Open up to `count` keep-alive connections, `parallel` at a time.

    Gives up early once `give_up_after` attempts have failed (a server whose pool is
    full accepts nothing more; waiting out every remaining attempt would take
    count/parallel timeouts) or when `deadline` (monotonic) passes.
    """
    held = HeldConnections()
    next_index = 0

    async def one() -> None:
        reader, writer = await open_connection(peer)
        try:
            response = await get(reader, writer)
        except BaseException:
            close(writer)
            raise
        if response.status != 200 or not response.keep_alive:
            close(writer)
            raise ValueError(f"HTTP {response.status}, keep-alive={response.keep_alive}")
        held.readers.append(reader)
        held.writers.append(writer)

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and held.gave_up is None:
            if time.monotonic() > deadline:
                held.gave_up = f"open phase deadline reached after {len(held.writers)} held"
                return
            next_index += 1
            try:
                await asyncio.wait_for(one(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                _failed(held, f"no connection/answer within {timeout:g}s", give_up_after)
            except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError) as exc:
                _failed(held, describe(exc), give_up_after)

    await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, count)))))
    return held


def _failed(held: HeldConnections, error: str, give_up_after: int) -> None:
    held.failed += 1
    held.first_error = held.first_error or error
    if held.failed >= give_up_after and held.gave_up is None:
        held.gave_up = f"stopped after {held.failed} failed attempts ({held.first_error})"


async def idle(args: argparse.Namespace, peer: Peer) -> dict[str, Any]:
    started = time.monotonic()
    held = await open_held(peer, args.connections, args.parallel, args.timeout,
                           started + args.open_deadline, args.give_up_after)
    opened = {
        "phase": "held", "requested": args.connections, "held": len(held.writers),
        "failed": held.failed, "first_error": held.first_error, "gave_up": held.gave_up,
        "open_seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(opened), flush=True)
    try:
        await _wait_for_go(args.hold_timeout)
        fresh = await fresh_latencies(peer, args.samples, args.fresh_timeout)
        return {**opened, "phase": "done", "fresh": fresh, "still_open": held.still_open()}
    finally:
        held.close_all()


async def _wait_for_go(timeout: float) -> None:
    """Block until the harness writes a line (it measures RSS meanwhile), or `timeout`."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout)


# -- silent --------------------------------------------------------------------------

async def silent(args: argparse.Namespace, peer: Peer) -> dict[str, Any]:
    quiet = await fresh_latencies(peer, args.samples, args.fresh_timeout)
    sockets, open_error = await open_silent(peer, args.connections, args.fresh_timeout)
    try:
        loaded = await fresh_latencies(peer, args.samples, args.fresh_timeout)
    finally:
        for writer in sockets:
            close(writer)
    ratio = loaded["ms"] / quiet["ms"] if quiet["ms"] and loaded["ms"] else None
    return {"silent_connections": len(sockets), "open_error": open_error, "quiet": quiet,
            "silent": loaded, "ratio": round(ratio, 3) if ratio else None}


async def open_silent(peer: Peer, count: int,
                      timeout: float) -> tuple[list[asyncio.StreamWriter], Optional[str]]:
    """TCP connections that never send a byte. Stops at the first that cannot even be
    connected (a server that handshakes in its accept loop stops accepting: its listen
    backlog fills up), and says so."""
    sockets: list[asyncio.StreamWriter] = []
    for _ in range(count):
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(peer.host, peer.port), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return sockets, f"TCP connect {len(sockets) + 1} timed out after {timeout:g}s"
        except OSError as exc:
            return sockets, f"TCP connect {len(sockets) + 1} failed: {describe(exc)}"
        sockets.append(writer)
    return sockets, None


# -- load ----------------------------------------------------------------------------

async def load(args: argparse.Namespace, peer: Peer) -> dict[str, Any]:
    """`connections` clients sending GETs back to back until `duration` passes."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    reconnects = 0
    stop_at = time.monotonic() + args.duration

    async def client() -> None:
        nonlocal reconnects
        reader = writer = None
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(open_connection(peer), args.timeout)
                    reconnects += 1
                response = await asyncio.wait_for(get(reader, writer), args.timeout)
                latencies.append(time.perf_counter() - started)
                if args.new_connection or not response.keep_alive:
                    close(writer)
                    writer = None
            except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError,
                    asyncio.TimeoutError, TimeoutError) as exc:
                key = describe(exc)
                errors[key] = errors.get(key, 0) + 1
                if writer is not None:
                    close(writer)
                writer = None
        if writer is not None:
            close(writer)

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(args.connections)))
    elapsed = time.monotonic() - began
    ordered = sorted(latencies)
    return {
        "requests": len(ordered), "seconds": round(elapsed, 3),
        "rps": round(len(ordered) / elapsed, 1) if elapsed else None,
        "p50_ms": _percentile_ms(ordered, 50), "p99_ms": _percentile_ms(ordered, 99),
        "connections_opened": reconnects, "errors": errors,
    }


def _percentile_ms(ordered: list[float], percent: float) -> Optional[float]:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))
    return round(ordered[index] * 1000, 3)


# -- command line --------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("probe", "idle", "silent", "load"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True, help="CA that signed the server certificate")
    parser.add_argument("--cert", help="client certificate (omit to test refusal)")
    parser.add_argument("--key", help="client key")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=64,
                        help="idle: connections being opened at once")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds one connection/request may take")
    parser.add_argument("--open-deadline", type=float, default=180.0,
                        help="idle: seconds the whole open phase may take")
    parser.add_argument("--give-up-after", type=int, default=128,
                        help="idle: stop opening after this many failed attempts")
    parser.add_argument("--hold-timeout", type=float, default=60.0,
                        help="idle: seconds to wait for the harness's go")
    parser.add_argument("--samples", type=int, default=5, help="fresh clients to time")
    parser.add_argument("--fresh-timeout", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=10.0, help="load: seconds")
    parser.add_argument("--new-connection", action="store_true",
                        help="load: one request per connection (full handshake each)")
    return parser


def raise_open_files_limit() -> int:
    """Idle tests hold thousands of sockets: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    peer = Peer(args.host, args.port, client_context(args.ca, args.cert, args.key))
    modes = {"idle": idle, "silent": silent, "load": load}
    if args.mode == "probe":
        return await probe(peer, args.timeout)
    return await modes[args.mode](args, peer)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    raise_open_files_limit()
    try:
        result = asyncio.run(_main(args))
    except Exception as exc:  # report, don't die with a traceback the harness can't read
        print(json.dumps({"error": describe(exc)}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
