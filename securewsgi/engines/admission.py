"""Admission of connections that have not finished their TLS handshake yet.

Before its handshake, a connection has proven nothing: anyone can open thousands and
stay silent. Left alone, they fill the connection pool and every real client waits
for `handshake_timeout` (a pre-authentication denial of service). So, as nginx-class
servers do, unfinished handshakes get a budget of their own, apart from
`max_connections`:

* `server.max_handshakes`: at most this many at once per worker. When it is full, the
  *oldest* unfinished handshake is dropped to admit the new one: a flood then churns
  through its own connections, while a real client, which finishes within
  milliseconds, is never the oldest for long.
* `server.max_handshakes_per_ip`: at most this many from one source address; a new one
  beyond it is closed at once (0 = no cap). Trusted proxies are exempt: all their
  clients share their address.

When a budget is full, one WARNING at most every `WARN_EVERY` seconds names the budget,
how many connections it dropped, and the source address with the most unfinished
handshakes. This module is engine-neutral and thread-safe.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Hashable
from typing import Callable, Optional

log = logging.getLogger("securewsgi.server")

WARN_EVERY = 10.0


class HandshakeBudget:
    """Tracks unfinished handshakes, oldest first, and their source addresses."""

    def __init__(self, limit: int, per_ip: int, exempt: Callable[[str], bool] = lambda _: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.per_ip = per_ip
        self.exempt = exempt
        self.clock = clock
        self.pending: collections.OrderedDict[Hashable, str] = collections.OrderedDict()
        self.by_ip: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self._dropped = {"server.max_handshakes": 0, "server.max_handshakes_per_ip": 0}
        self._warned_at = {key: -WARN_EVERY for key in self._dropped}

    def admit(self, token: Hashable, ip: str) -> tuple[bool, Optional[Hashable]]:
        """(admitted, victim): whether `token` may start its handshake, and the oldest
        unfinished handshake the caller must now drop to make room (or None)."""
        with self.lock:
            if self.per_ip and self.by_ip[ip] >= self.per_ip and not self.exempt(ip):
                self._full("server.max_handshakes_per_ip", self.per_ip, ip)
                return False, None
            victim = None
            if len(self.pending) >= self.limit:
                victim, victim_ip = self.pending.popitem(last=False)
                self._forget_ip(victim_ip)
                self._full("server.max_handshakes", self.limit, self._top_ip(victim_ip))
            self.pending[token] = ip
            self.by_ip[ip] += 1
            return True, victim

    def finished(self, token: Hashable) -> None:
        """The handshake of `token` ended (done, failed or dropped): free its place."""
        with self.lock:
            ip = self.pending.pop(token, None)
            if ip is not None:
                self._forget_ip(ip)

    def __len__(self) -> int:
        return len(self.pending)

    def _forget_ip(self, ip: str) -> None:
        count = self.by_ip[ip] - 1
        if count > 0:
            self.by_ip[ip] = count
        else:
            del self.by_ip[ip]

    def _top_ip(self, fallback: str) -> str:
        top = self.by_ip.most_common(1)
        return top[0][0] if top else fallback

    def _full(self, budget: str, limit: int, ip: str) -> None:
        self._dropped[budget] += 1
        now = self.clock()
        if now - self._warned_at[budget] < WARN_EVERY:
            return
        dropped, self._dropped[budget] = self._dropped[budget], 0
        self._warned_at[budget] = now
        what = ("dropping the oldest unfinished handshake for each new connection"
                if budget == "server.max_handshakes" else
                "closing its new connections at once")
        log.warning("%s (%d) is full: %s; %d connection(s) dropped in the last %gs; top "
                    "source %s with %d unfinished handshake(s)", budget, limit, what,
                    dropped, WARN_EVERY, ip, self.by_ip.get(ip, 0))
