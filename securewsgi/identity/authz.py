"""Authorization rules, compiled once at start-up into cheap matchers.

`compile_policy` turns validated `RuleConfig`s into a `Policy`; `Policy.decide(path,
method, peer)` is all the per-request work: a few set/prefix tests for the path and
method, then precompiled regular expressions against fields the `PeerIdentity` already
holds.

Pattern language of an allow entry value:

* a **glob**: ``*`` matches any run of characters except the field's separator, ``**``
  any run including it; every other character is literal (``?`` and ``[`` too; use
  ``re:`` for anything fancier). Separators: ``,`` in ``dn``/``issuer_dn`` (an escaped
  ``\\,`` inside a value is not a separator), ``.`` in ``san_dns``, ``/`` in
  ``san_uri``, ``@`` in ``san_email``; ``cn`` has none (``*`` matches anything).
* ``re:`` + a regular expression that must match the whole value (`re.fullmatch`).
* ``serial``: hex, compared as uppercase without leading zeros (``0a:bc``, ``0x0ABC``
  and ``ABC`` are the same serial); ``fingerprint_sha256``: 64 hex digits, colons and
  case ignored. Both also accept ``re:`` (against ``ABC`` / lowercase hex), no globs.
* ``san_dns`` ignores case (globs and ``re:``); every other field is case-sensitive.

A ``san_uri`` **glob** (``*`` or ``**``) never matches a URI that a consumer could
resolve to another path: one with a ``.`` or ``..`` path segment, a percent-encoded
``.``, ``/`` or ``\\`` (``%2e``, ``%2f``, ``%5c``, any case) or a literal ``\\``, anywhere
in the value. Otherwise ``spiffe://example.org/ns/ops/*`` would admit
``spiffe://example.org/ns/ops/..`` or ``.../ops/%2e%2e%2fadmin``, which a service that
normalises the URI reads as ``spiffe://example.org/ns/admin``; SPIFFE IDs may not
contain any of these at all. The check covers the whole value, not just the part a
wildcard matched, so no pattern shape can reopen it. An exact pattern (no ``*``) and a
``re:`` pattern are taken literally: they match such a URI only when written for it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ..config import AllowEntry, RuleConfig
from ..errors import ConfigError
from ..tls.peer import PeerIdentity
from .paths import PathError, normalise_path

__all__ = [
    "FIELD_SEPARATORS",
    "Decision",
    "Policy",
    "compile_entry",
    "compile_glob",
    "compile_pattern",
    "compile_policy",
    "normalise_fingerprint",
    "normalise_serial",
]

Source = Union[str, Path, None]
Matcher = Callable[[Optional[PeerIdentity]], bool]

#: The character a single ``*`` never crosses, per glob field (None: no separator).
FIELD_SEPARATORS = {
    "cn": None,
    "dn": ",",
    "issuer_dn": ",",
    "san_dns": ".",
    "san_uri": "/",
    "san_email": "@",
}
DEFAULT_RULE = "(default)"


# ---------------------------------------------------------------------- patterns


def compile_glob(pattern: str, separator: Optional[str], ignore_case: bool = False
                 ) -> re.Pattern[str]:
    """A glob as a regular expression for `re.Pattern.fullmatch`."""
    if separator is None:
        one = ".*"
    elif separator == ",":
        # RFC 4514: "\," is a comma inside a value, not the end of the RDN
        one = r"(?:[^,\\]|\\.)*"
    else:
        one = f"[^{re.escape(separator)}]*"
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append(one)
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


def normalise_serial(text: str) -> str:
    """``0a:bc`` / ``0x0ABC`` / ``abc`` -> ``ABC`` (as `PeerIdentity.serial_hex`)."""
    value = text.strip().replace(":", "").replace(" ", "")
    if value[:2].lower() == "0x":
        value = value[2:]
    if not value or not re.fullmatch(r"[0-9A-Fa-f]+", value):
        raise ValueError(f"a serial is hexadecimal, got {text!r}")
    return format(int(value, 16), "X")


def normalise_fingerprint(text: str) -> str:
    """``AB:CD:...`` -> ``abcd...`` (64 hex digits, as `PeerIdentity.fingerprint_sha256`)."""
    value = text.strip().replace(":", "").replace(" ", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"a SHA-256 fingerprint is 64 hex digits, got {text!r}")
    return value


# In a URI: a "." or ".." path segment, an encoded dot, slash or backslash, or a literal
# backslash (which WHATWG URL parsers treat as a slash).
_AMBIGUOUS_URI = re.compile(r"%(?:2[eEfF]|5[cC])|\\|(?:^|/)\.\.?(?=$|[/?#])")


def _unambiguous_uri_glob(glob: Callable[[str], object]) -> Callable[[str], bool]:
    """`glob`, refusing URIs whose path a consumer could resolve differently."""
    def matches(value: str) -> bool:
        return _AMBIGUOUS_URI.search(value) is None and glob(value) is not None
    return matches


def compile_pattern(field: str, pattern: str) -> Callable[[str], bool]:
    """A predicate on one field value; ValueError (or re.error) for a bad pattern."""
    ignore_case = field == "san_dns"
    if pattern.startswith("re:"):
        flags = re.IGNORECASE if ignore_case else 0
        return re.compile(pattern[3:], flags).fullmatch  # type: ignore[return-value]
    if field == "serial":
        serial = normalise_serial(pattern)
        return serial.__eq__
    if field == "fingerprint_sha256":
        fingerprint = normalise_fingerprint(pattern)
        return fingerprint.__eq__
    if "*" not in pattern:
        if ignore_case:
            folded = pattern.casefold()
            return lambda value: value.casefold() == folded
        return pattern.__eq__
    glob = compile_glob(pattern, FIELD_SEPARATORS[field], ignore_case).fullmatch
    if field == "san_uri":
        return _unambiguous_uri_glob(glob)
    return glob  # type: ignore[return-value]


def _field_matcher(field: str, test: Callable[[str], bool]) -> Matcher:
    """A predicate on the peer for one (field, pattern) condition."""
    if field == "cn":
        return lambda p: p is not None and p.common_name is not None and bool(
            test(p.common_name))
    if field == "dn":
        return lambda p: p is not None and bool(test(p.subject))
    if field == "issuer_dn":
        return lambda p: p is not None and bool(test(p.issuer))
    if field == "serial":
        return lambda p: p is not None and bool(test(p.serial_hex))
    if field == "fingerprint_sha256":
        return lambda p: p is not None and bool(test(p.fingerprint_sha256))
    if field in ("san_dns", "san_uri", "san_email"):
        return lambda p: p is not None and any(test(v) for v in getattr(p, field))
    raise ValueError(f"unknown allow field {field!r}")  # config.read_allow_entry forbids it


def _always(_peer: Optional[PeerIdentity]) -> bool:
    return True


def _verified(peer: Optional[PeerIdentity]) -> bool:
    return peer is not None


def compile_entry(entry: AllowEntry, source: Source, where: str) -> Matcher:
    """One allow entry: all of its conditions must hold (logical AND)."""
    matchers = []
    for field, pattern in entry.conditions:
        if field == "anonymous":
            matchers.append(_always)
            continue
        if field == "any":
            matchers.append(_verified)
            continue
        try:
            test = compile_pattern(field, pattern)
        except re.error as exc:
            raise ConfigError(source, f"{where}.{field}",
                              f"invalid regular expression {pattern[3:]!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(source, f"{where}.{field}", str(exc)) from None
        matchers.append(_field_matcher(field, test))
    if len(matchers) == 1:
        return matchers[0]
    checks = tuple(matchers)
    return lambda peer: all(check(peer) for check in checks)


# -------------------------------------------------------------------------- rules


def _path_pattern(pattern: str, source: Source, where: str) -> tuple[bool, str]:
    """``/admin/*`` -> (True, "/admin"); ``/healthz/`` -> (False, "/healthz")."""
    subtree = pattern.endswith("/*")
    base = pattern[:-2] if subtree else pattern
    if "*" in base:
        raise ConfigError(source, where, f"only a trailing '/*' is a wildcard in paths, "
                                         f"got {pattern!r}")
    if not base.startswith("/") and base != "":
        raise ConfigError(source, where, f"path patterns start with '/', got {pattern!r}")
    if re.search(r"%[0-9A-Fa-f]{2}", base):
        raise ConfigError(source, where, f"write paths decoded, as the application sees "
                                         f"them (e.g. /café, not /caf%C3%A9), got {pattern!r}")
    # PEP 3333: PATH_INFO holds the request's bytes as latin-1 characters
    base = base.encode("utf-8").decode("latin-1")
    try:
        normal = normalise_path(base or "/")
    except PathError as exc:
        raise ConfigError(source, where, f"{pattern!r}: {exc.reason}") from None
    if normal != (base or "/") and normal.rstrip("/") != base.rstrip("/"):
        raise ConfigError(source, where, f"{pattern!r} is not a normalised path "
                                         f"(it means {normal!r})")
    return subtree, normal.rstrip("/")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str  # the deciding rule's name, or "(default)"


class _Rule:
    __slots__ = ("allow", "exact", "methods", "name", "prefixes", "roots")

    def __init__(self, rule: RuleConfig, source: Source, where: str) -> None:
        self.name = rule.name
        exact, roots = set(), set()
        for pattern in rule.paths:
            subtree, base = _path_pattern(pattern, source, f"{where}.paths")
            if subtree:
                roots.add(base)
            else:
                exact.add(base)
                exact.add(base + "/")  # "/healthz" also protects "/healthz/"
        self.exact: frozenset[str] = frozenset(p or "/" for p in exact)
        self.roots: frozenset[str] = frozenset(roots)
        # "/admin/*" matches "/admin" and everything below "/admin/"; "/*" matches all
        self.prefixes: tuple[str, ...] = tuple(sorted(r + "/" for r in roots))
        methods = {m.upper() for m in rule.methods}
        if "GET" in methods:
            methods.add("HEAD")  # HEAD is answered by GET handlers in nearly every framework
        self.methods: frozenset[str] = frozenset(methods)
        self.allow: tuple[Matcher, ...] = tuple(
            compile_entry(entry, source, f"{where}.allow[{i}]")
            for i, entry in enumerate(rule.allow)
        )

    def applies(self, path: str, method: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return (path in self.exact or path in self.roots
                or (bool(self.prefixes) and path.startswith(self.prefixes)))

    def permits(self, peer: Optional[PeerIdentity]) -> bool:
        return any(match(peer) for match in self.allow)


_RECENT_DECISIONS = 4096


class Policy:
    """Ordered rules plus the default; `decide` is the per-request entry point."""

    def __init__(self, rules: Sequence[_Rule], default: str = "allow") -> None:
        if default not in ("allow", "deny"):
            raise ValueError(f"default must be allow or deny, got {default!r}")
        self.rules = tuple(rules)
        self.default = default
        self._default = Decision(default == "allow", DEFAULT_RULE)
        self._decisions = {r.name: (Decision(True, r.name), Decision(False, r.name))
                           for r in self.rules}
        # (path, method, id(peer)) -> (peer, decision): clients repeat their requests,
        # and a lookup costs a fifth of walking the rules. Holding the peer keeps its
        # id from being reused while the entry lives; the table is emptied when full.
        self._recent: dict[tuple[str, str, int], tuple[Optional[PeerIdentity], Decision]] = {}

    @property
    def active(self) -> bool:
        """False when every request would be allowed without looking at it."""
        return bool(self.rules) or self.default == "deny"

    def decide(self, path: str, method: str, peer: Optional[PeerIdentity]) -> Decision:
        """First rule whose paths and method match decides; else the default.

        `path` must already be normalised (`securewsgi.identity.paths.judge_path`); `method` is
        compared upper-cased, as frameworks route it.
        """
        key = (path, method, id(peer))
        recent = self._recent.get(key)
        if recent is not None and recent[0] is peer:
            return recent[1]
        decision = self._walk(path, method if method.isupper() else method.upper(), peer)
        if len(self._recent) >= _RECENT_DECISIONS:
            self._recent.clear()
        self._recent[key] = (peer, decision)
        return decision

    def _walk(self, path: str, method: str, peer: Optional[PeerIdentity]) -> Decision:
        for rule in self.rules:
            if rule.applies(path, method):
                allowed, denied = self._decisions[rule.name]
                return allowed if rule.permits(peer) else denied
        return self._default


def compile_policy(rules: Sequence[RuleConfig], default: str = "allow",
                   source: Source = None, where: str = "authorization.rules") -> Policy:
    """Compile validated rules; a bad pattern is a `ConfigError` naming the rule,
    e.g. ``authorization.rules[admin].allow[0].cn``."""
    if default not in ("allow", "deny"):
        raise ConfigError(source, where.rsplit(".", 1)[0] + ".default",
                          f"must be allow or deny, got {default!r}")
    return Policy([_Rule(rule, source, f"{where}[{rule.name}]") for rule in rules], default)
