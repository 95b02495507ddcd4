"""Audit securewsgi's TLS defaults with testssl.sh and sslscan against a real server.

`tools/tls-audit` is the command; this module is its body (ruff lints only `.py`
files, so the launcher stays a few lines). It starts the sample service (a copy of
etc/service.yaml with its own temporary PKI, on 127.0.0.1 and port 0, so it never
collides with anything) once per TLS mode, scans it with both tools, and judges the
result. The two scanners are independent implementations (bash + OpenSSL sockets,
and C against libssl), so a cipher or protocol one of them misses the other catches.

Exit codes: 0 audit passed; 1 a finding fails the audit (HIGH/CRITICAL severity, a
protocol below TLS 1.2, or a cipher without forward secrecy); 2 a scanner is missing
or the arguments are wrong; 3 the audit could not run (server did not start, a scan
timed out or produced no result); 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "etc" / "service.yaml"
PROG = "tls-audit"

EXIT_PASS, EXIT_FINDINGS, EXIT_MISSING, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MODES = ("server", "mutual")
CLIENT_NAME = "auditor"
# Ordered from worst to least; testssl.sh's WARN means "could not test", FATAL "scan failed".
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK")
FAILING_SEVERITIES = frozenset({"CRITICAL", "HIGH"})
WEAK_PROTOCOLS = frozenset({"SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"})
PROTOCOL_ORDER = ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")

# Debian package that provides each scanner; the Debian testssl.sh package installs the
# script as /usr/bin/testssl, an upstream checkout calls it testssl.sh.
SCANNER_PACKAGES = {"testssl": "testssl.sh", "sslscan": "sslscan"}
SCANNER_NAMES = {"testssl": ("testssl", "testssl.sh"), "sslscan": ("sslscan",)}

# testssl.sh check flags: protocols, cipher categories, forward secrecy, server
# preferences, server defaults (certificate, extensions), HTTP headers, vulnerabilities,
# and ciphers per protocol. Left out: client simulation (-c, informational and the
# slowest part) and GREASE/implementation-bug probes (-g): neither rates a setting.
TESTSSL_CHECKS = ("-p", "-s", "-f", "-P", "-S", "-h", "-U", "-E")
TESTSSL_TIMEOUTS = ("--openssl-timeout", "5", "--connect-timeout", "5")
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 15.0
_LISTENING = re.compile(r"listening on https://127\.0\.0\.1:(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Waiver:
    """A finding about the throw-away development PKI, not about securewsgi's TLS setup.

    Each is matched by testssl.sh id *and* finding text, so a different problem under
    the same id still fails, and each stays visible in the report with its reason.
    """

    id: str
    finding: str
    reason: str


WAIVERS = (
    Waiver("cert_revocation", "Neither CRL nor OCSP URI provided",
           "the audit's temporary development certificate carries no CRL distribution point "
           "or OCSP URI (securewsgi-certs issues development certificates only); production "
           "certificates come from a real CA, which includes them"),
)


class AuditError(Exception):
    """The audit could not be carried out (as opposed to: it found a problem)."""


class Interrupted(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so every `finally` stops what we started."""


# --------------------------------------------------------------------------- results


@dataclass
class Cipher:
    protocol: str
    name: str
    forward_secrecy: bool
    seen_by: list[str] = field(default_factory=list)
    iana: Optional[str] = None


@dataclass
class Finding:
    scanner: str
    id: str
    severity: str
    finding: str
    waived: Optional[str] = None


@dataclass
class ScanResult:
    """What one scanner saw in one mode."""

    protocols: set[str] = field(default_factory=set)
    ciphers: list[Cipher] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    service: Optional[str] = None  # testssl.sh's service detection: "HTTP" after a full handshake


@dataclass
class ModeReport:
    mode: str
    port: int
    protocols: list[str]
    ciphers: list[Cipher]
    findings: list[Finding]
    counts: dict[str, int]
    problems: list[str]
    duration_s: float
    # True when testssl.sh finished handshakes and ran its HTTP checks (in mutual mode:
    # proof that it presented the client certificate)
    http_checked: bool = False

    @property
    def passed(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- scanners


@dataclass(frozen=True)
class Scanners:
    testssl: Path
    sslscan: Path
    openssl: Path


def find_scanners(testssl: Optional[str], sslscan: Optional[str]) -> tuple[Optional[Scanners],
                                                                           list[str]]:
    """Locate the scanners; return the Debian packages to install for the missing ones."""
    found: dict[str, Optional[str]] = {}
    for tool, override in (("testssl", testssl), ("sslscan", sslscan)):
        candidates = (override,) if override else SCANNER_NAMES[tool]
        found[tool] = next((p for p in map(shutil.which, candidates) if p), None)
    openssl = shutil.which("openssl")
    missing = [SCANNER_PACKAGES[tool] for tool, path in found.items() if path is None]
    if openssl is None:
        missing.append("openssl")
    if missing:
        return None, missing
    return Scanners(Path(found["testssl"]), Path(found["sslscan"]), Path(openssl)), []


def tool_version(argv: Sequence[str], pattern: str) -> str:
    """Version string for the report: which scanner rules produced these verdicts."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, _ANSI.sub("", out))
    return match.group(1) if match else "unknown"


def testssl_has_mtls(testssl: Path) -> bool:
    """testssl.sh >= 3.2 has --mtls; Debian 12 ships 3.0.8, which has not."""
    try:
        out = subprocess.run([str(testssl), "--help"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--mtls" in out


def write_openssl_shim(directory: Path, openssl: Path, bundle: Path) -> Path:
    """An `openssl` for testssl.sh 3.0 that presents the client certificate.

    testssl.sh 3.0 cannot send a client certificate, so against mutual TLS it skips
    every check that needs a finished handshake (HTTP headers, BREACH, client-initiated
    renegotiation). Its handshake probes that use bash sockets only need the
    ServerHello and are unaffected; the rest go through `openssl s_client`, and this
    wrapper adds `-cert BUNDLE` (certificate and key in one PEM) to each connection.
    That is what --mtls does in testssl.sh 3.2.
    """
    shim = directory / "openssl-with-client-cert"
    real, cert = shlex.quote(str(openssl)), shlex.quote(str(bundle))
    shim.write_text(
        "#!/bin/sh\n"
        "# written by tools/tls-audit: testssl.sh 3.0 has no --mtls\n"
        'if [ "$1" = s_client ]; then\n'
        '  for arg in "$@"; do\n'
        f'    if [ "$arg" = -connect ]; then exec {real} "$@" -cert {cert}; fi\n'
        "  done\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    return shim


def run_bounded(argv: Sequence[str], log: Path, timeout: float, what: str,
                cwd: Path) -> int:
    """Run a scanner in its own process group, so a timeout or Ctrl-C ends its children.

    testssl.sh starts many `openssl` and `timeout` processes; killing only the script
    would leave them connected to a server we are about to stop.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(cwd),
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AuditError(f"{what} did not finish within {timeout:.0f}s "
                             f"(its output: {log})") from None
        finally:
            if proc.poll() is None:
                stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the group led by `proc` (a scanner we started), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------- testssl.sh


def run_testssl(scanners: Scanners, port: int, mode: str, pki: Path, workdir: Path,
                timeout: float, native_mtls: bool) -> ScanResult:
    json_path = workdir / f"testssl-{mode}.json"
    argv = [str(scanners.testssl), "--quiet", "--warnings", "off", "--color", "0",
            "--nodns", "none", *TESTSSL_TIMEOUTS, "--add-ca", str(pki / "ca.pem"),
            "--jsonfile", str(json_path), *TESTSSL_CHECKS]
    if mode == "mutual":
        bundle = client_bundle(pki)
        if native_mtls:
            argv += ["--mtls", str(bundle)]
        else:
            argv += ["--openssl", str(write_openssl_shim(workdir, scanners.openssl, bundle))]
    argv.append(f"127.0.0.1:{port}")
    log = workdir / f"testssl-{mode}.log"
    run_bounded(argv, log, timeout, f"testssl.sh ({mode} mode)", workdir)
    try:
        records = json.loads(json_path.read_text())
    except (OSError, ValueError):
        raise AuditError(f"testssl.sh ({mode} mode) wrote no JSON result; see {log}") from None
    return parse_testssl(records)


def client_bundle(pki: Path) -> Path:
    """Client certificate and key in one PEM, the form testssl.sh --mtls takes."""
    bundle = pki / f"{CLIENT_NAME}-bundle.pem"
    if not bundle.exists():
        bundle.write_bytes((pki / f"{CLIENT_NAME}.pem").read_bytes()
                           + (pki / f"{CLIENT_NAME}-key.pem").read_bytes())
        bundle.chmod(0o600)
    return bundle


_TESTSSL_PROTOCOLS = {"SSLv2": "SSLv2", "SSLv3": "SSLv3", "TLS1": "TLSv1.0",
                      "TLS1_1": "TLSv1.1", "TLS1_2": "TLSv1.2", "TLS1_3": "TLSv1.3"}
_TESTSSL_CIPHER_ID = re.compile(r"^cipher-(ssl2|ssl3|tls1|tls1_1|tls1_2|tls1_3)_x[0-9a-f]+$")
_TESTSSL_CIPHER_PROTOCOLS = {"ssl2": "SSLv2", "ssl3": "SSLv3", "tls1": "TLSv1.0",
                             "tls1_1": "TLSv1.1", "tls1_2": "TLSv1.2", "tls1_3": "TLSv1.3"}
_TESTSSL_CIPHER_NAME = re.compile(r"\bx[0-9a-f]{2,6}\s+(\S+)")


def parse_testssl(records: list[dict[str, Any]]) -> ScanResult:
    """Protocols, ciphers per protocol (from -E) and rated findings from the flat JSON."""
    result = ScanResult()
    for record in records:
        rid, severity = record.get("id", ""), record.get("severity", "")
        text = record.get("finding", "")
        if severity == "FATAL":
            result.fatal.append(f"testssl.sh {rid}: {text}")
            continue
        if rid == "service":
            result.service = text
        if rid in _TESTSSL_PROTOCOLS and protocol_offered(text):
            result.protocols.add(_TESTSSL_PROTOCOLS[rid])
        cipher_id = _TESTSSL_CIPHER_ID.match(rid)
        if cipher_id:
            name = _TESTSSL_CIPHER_NAME.search(text)
            protocol = _TESTSSL_CIPHER_PROTOCOLS[cipher_id.group(1)]
            if name:
                iana = text.split()[-1]
                result.ciphers.append(Cipher(protocol, name.group(1),
                                             has_forward_secrecy(protocol, name.group(1)),
                                             ["testssl"], iana if "_" in iana else None))
            continue
        if severity in SEVERITIES:
            result.findings.append(Finding("testssl", rid, severity, text, waiver_for(rid, text)))
    return result


def protocol_offered(finding: str) -> bool:
    """testssl.sh says 'offered', 'offered with final', 'not offered', ..."""
    text = finding.strip().lower()
    return "offered" in text and not text.startswith("not")


def waiver_for(finding_id: str, text: str) -> Optional[str]:
    base = finding_id.split()[0]  # ids get " <hostCert#N>" when a server has several certs
    for waiver in WAIVERS:
        if base == waiver.id and waiver.finding in text:
            return waiver.reason
    return None


# -------------------------------------------------------------------------- sslscan


def run_sslscan(scanners: Scanners, port: int, mode: str, pki: Path, workdir: Path,
                timeout: float) -> ScanResult:
    xml_path = workdir / f"sslscan-{mode}.xml"
    argv = [str(scanners.sslscan), "--no-colour", "--timeout=5", f"--xml={xml_path}"]
    if mode == "mutual":
        argv += [f"--certs={pki / (CLIENT_NAME + '.pem')}",
                 f"--pk={pki / (CLIENT_NAME + '-key.pem')}"]
    argv.append(f"127.0.0.1:{port}")
    log = workdir / f"sslscan-{mode}.log"
    run_bounded(argv, log, timeout, f"sslscan ({mode} mode)", workdir)
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        raise AuditError(f"sslscan ({mode} mode) wrote no XML result; see {log}") from None
    return parse_sslscan(root)


_SSLSCAN_STRENGTH = {"null": "CRITICAL", "anonymous": "CRITICAL", "weak": "HIGH",
                     "medium": "MEDIUM"}


def parse_sslscan(root: ET.Element) -> ScanResult:
    """sslscan rates little itself; turn what it reports into testssl-style severities."""
    result = ScanResult()
    test = root.find("ssltest")
    if test is None:
        result.fatal.append("sslscan: no <ssltest> in its XML (connection failed?)")
        return result
    for proto in test.iter("protocol"):
        name = sslscan_protocol(proto.get("type", ""), proto.get("version", ""))
        if proto.get("enabled") == "1":
            result.protocols.add(name)
    for cipher in test.iter("cipher"):
        protocol, name = cipher.get("sslversion", ""), cipher.get("cipher", "")
        result.ciphers.append(Cipher(protocol, name, has_forward_secrecy(protocol, name),
                                     ["sslscan"]))
        severity = _SSLSCAN_STRENGTH.get(cipher.get("strength", ""))
        if severity:
            result.findings.append(Finding("sslscan", f"cipher_strength {name}", severity,
                                           f"{protocol} {name} rated {cipher.get('strength')}"))
    result.findings.extend(sslscan_vulnerabilities(test))
    return result


def sslscan_protocol(kind: str, version: str) -> str:
    return f"SSLv{version}" if kind == "ssl" else f"TLSv{version}"


def sslscan_vulnerabilities(test: ET.Element) -> list[Finding]:
    findings = []
    for hb in test.iter("heartbleed"):
        if hb.get("vulnerable") == "1":
            findings.append(Finding("sslscan", "heartbleed", "CRITICAL",
                                    f"{hb.get('sslversion')} vulnerable to Heartbleed"))
    for reneg in test.iter("renegotiation"):
        if reneg.get("supported") == "1":
            secure = reneg.get("secure") == "1"
            findings.append(Finding("sslscan", "renegotiation", "INFO" if secure else "HIGH",
                                    "secure renegotiation supported" if secure
                                    else "insecure renegotiation supported"))
    for comp in test.iter("compression"):
        if comp.get("supported") == "1":
            findings.append(Finding("sslscan", "compression", "HIGH",
                                    "TLS compression supported (CRIME)"))
    for cert in test.iter("certificate"):
        if (cert.findtext("expired") or "").strip() == "true":
            findings.append(Finding("sslscan", "certificate_expired", "HIGH",
                                    "server certificate expired"))
    return findings


def has_forward_secrecy(protocol: str, name: str) -> bool:
    """TLS 1.3 key exchange is always ephemeral; below it, only (EC)DHE suites are."""
    if protocol == "TLSv1.3":
        return True
    return name.startswith(("ECDHE-", "DHE-", "EDH-"))


# --------------------------------------------------------------------------- server


def make_pki(directory: Path, key_type: str) -> Path:
    """A fresh development PKI for this run only, with one client certificate."""
    pki = directory / "pki"
    run_quiet([sys.executable, "-m", "securewsgi.commands.certs", "init", str(pki),
               "--client", CLIENT_NAME, "--key-type", key_type], "securewsgi-certs init")
    return pki


def run_quiet(argv: Sequence[str], what: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AuditError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()}")


# tls keys that name files, or alias names we would otherwise collide with.
_TLS_REPLACED = ("certfile", "keyfile", "ca_certs", "crl_file", "key_password", "cert_file",
                 "key_file", "ca_file", "cert_reqs", "mode")


def write_service_config(source: Path, workdir: Path, pki: Path, mode: str) -> Path:
    """A copy of `source` that uses the temporary PKI, `mode`, 127.0.0.1 and port 0.

    Everything else (versions, ciphers, timeouts, the app) is kept: those are the
    settings under audit. App paths are made absolute, since the copy lives elsewhere.
    """
    try:
        config = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AuditError(f"--config {source}: cannot read it as YAML: {exc}") from None
    if not isinstance(config, dict):
        raise AuditError(f"--config {source}: not a YAML service file (a mapping)")
    server = config.setdefault("server", {})
    server.update({"host": "127.0.0.1", "port": 0, "workers": 1})
    tls = {k: v for k, v in (config.get("tls") or {}).items() if k not in _TLS_REPLACED}
    tls.update({"mode": mode, "certfile": str(pki / "server.pem"),
                "keyfile": str(pki / "server-key.pem")})
    if mode == "mutual":
        tls.update({"ca_certs": str(pki / "ca.pem"), "crl_file": str(pki / "crl.pem")})
    config["tls"] = tls
    app = config.get("app") or {}
    if app.get("paste"):
        app["paste"] = str((source.parent / app["paste"]).resolve())
    if app.get("python_path"):
        app["python_path"] = [str((source.parent / p).resolve()) for p in app["python_path"]]
    config.setdefault("logging", {})["access_log"] = "-"
    path = workdir / f"service-{mode}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Server:
    """`python -m securewsgi --config FILE` as our child; stopped by its PID, always."""

    def __init__(self, config: Path, workdir: Path, mode: str) -> None:
        self.config = config
        self.stderr_path = workdir / f"server-{mode}.stderr"
        self.stdout_path = workdir / f"server-{mode}.stdout"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self) -> int:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # own session: a Ctrl-C in the terminal reaches us, and we stop it in order
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "securewsgi", "--config", str(self.config)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                cwd=str(self.config.parent), start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.stderr())
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                raise AuditError(f"the server exited with {self.proc.returncode}: "
                                 f"{self.last_error()}")
            time.sleep(0.05)
        raise AuditError(f"the server did not log 'listening on' within "
                         f"{SERVER_START_TIMEOUT:.0f}s ({self.stderr_path})")

    def stop(self) -> None:
        """SIGTERM (graceful stop), then SIGKILL if it outlives the grace period."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                continue

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def last_error(self) -> str:
        lines = [ln for ln in self.stderr().splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"


@contextlib.contextmanager
def running_server(config: Path, workdir: Path, mode: str) -> Iterator[Server]:
    server = Server(config, workdir, mode)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------- judging


def merge_ciphers(results: Sequence[ScanResult]) -> list[Cipher]:
    """One entry per (protocol, cipher), noting which scanners saw it."""
    merged: dict[tuple[str, str], Cipher] = {}
    for result in results:
        for cipher in result.ciphers:
            key = (cipher.protocol, cipher.name)
            if key in merged:
                merged[key].seen_by = sorted(set(merged[key].seen_by) | set(cipher.seen_by))
                merged[key].iana = merged[key].iana or cipher.iana
            else:
                merged[key] = Cipher(cipher.protocol, cipher.name, cipher.forward_secrecy,
                                     list(cipher.seen_by), cipher.iana)
    return sorted(merged.values(), key=lambda c: (protocol_rank(c.protocol), c.name))


def protocol_rank(protocol: str) -> int:
    return PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)


def judge(protocols: Sequence[str], ciphers: Sequence[Cipher],
          findings: Sequence[Finding]) -> list[str]:
    """Every reason this mode fails the audit, one line each; empty means it passes."""
    problems = [f"protocol {p} is offered (TLS 1.2 is the minimum)"
                for p in protocols if p in WEAK_PROTOCOLS]
    problems += [f"cipher {c.name} ({c.protocol}) has no forward secrecy"
                 for c in ciphers if not c.forward_secrecy]
    problems += [f"{f.severity} finding from {f.scanner}: {f.id}: {f.finding}"
                 for f in findings if f.severity in FAILING_SEVERITIES and not f.waived]
    return problems


def audit_mode(mode: str, scanners: Scanners, pki: Path, workdir: Path, config: Path,
               timeout: float, native_mtls: bool) -> ModeReport:
    started = time.monotonic()
    service = write_service_config(config, workdir, pki, mode)
    with running_server(service, workdir, mode) as server:
        progress(f"{mode}: server on 127.0.0.1:{server.port}; running sslscan")
        sslscan = run_sslscan(scanners, server.port, mode, pki, workdir, timeout)
        progress(f"{mode}: running testssl.sh (about a minute)")
        testssl = run_testssl(scanners, server.port, mode, pki, workdir, timeout, native_mtls)
    results = (testssl, sslscan)
    fatal = [msg for r in results for msg in r.fatal]
    if fatal:
        raise AuditError(f"{mode} mode: a scan failed: " + "; ".join(fatal))
    protocols = sorted(set().union(*(r.protocols for r in results)), key=protocol_rank)
    ciphers = merge_ciphers(results)
    if not protocols or not ciphers:
        raise AuditError(f"{mode} mode: the scanners saw no protocol or cipher at all; "
                         f"see the logs in {workdir}")
    findings = [f for r in results for f in r.findings]
    counts = Counter(f.severity for f in findings if not f.waived)
    counts["waived"] = sum(1 for f in findings if f.waived)
    return ModeReport(mode, server.port, protocols, ciphers, findings,
                      {k: counts.get(k, 0) for k in (*SEVERITIES, "waived")},
                      judge(protocols, ciphers, findings), time.monotonic() - started,
                      http_checked=testssl.service == "HTTP")


# ------------------------------------------------------------------------- reporting


def progress(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


TABLE_SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "waived")


def summary_table(reports: Sequence[ModeReport]) -> str:
    header = ["mode", "protocols", "ciphers", *TABLE_SEVERITIES, "result"]
    rows = [header]
    for r in reports:
        fs = sum(1 for c in r.ciphers if c.forward_secrecy)
        rows.append([r.mode, " ".join(r.protocols), f"{len(r.ciphers)} ({fs} FS)",
                     *(str(r.counts[s]) for s in TABLE_SEVERITIES),
                     "pass" if r.passed else "FAIL"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def details(reports: Sequence[ModeReport]) -> str:
    lines = []
    for r in reports:
        http = "HTTP checks run" if r.http_checked else "HTTP checks SKIPPED by testssl.sh"
        lines.append(f"\n{r.mode} mode (port {r.port}, {r.duration_s:.0f}s, {http}):")
        for protocol in r.protocols:
            names = [c.name + ("" if c.forward_secrecy else " [no FS]")
                     for c in r.ciphers if c.protocol == protocol]
            lines.append(f"  {protocol}: {' '.join(names)}")
        notable = [f for f in r.findings
                   if f.severity in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN")]
        for f in sorted(notable, key=lambda f: SEVERITIES.index(f.severity)):
            tag = "waived" if f.waived else f.severity
            lines.append(f"  {tag:<8} {f.scanner} {f.id}: {f.finding}")
            if f.waived:
                lines.append(f"           because {f.waived}")
        lines += [f"  PROBLEM  {p}" for p in r.problems]
    return "\n".join(lines)


def json_summary(reports: Sequence[ModeReport], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "passed": all(r.passed for r in reports),
        "failing_severities": sorted(FAILING_SEVERITIES),
        "modes": [
            {
                "mode": r.mode,
                "passed": r.passed,
                "port": r.port,
                "duration_s": round(r.duration_s, 1),
                "http_checked": r.http_checked,
                "protocols": r.protocols,
                "ciphers": [asdict(c) for c in r.ciphers],
                "findings_by_severity": r.counts,
                # OK and INFO records are many and rate nothing; the raw JSON has them
                "findings": [asdict(f) for f in r.findings if f.severity not in ("OK", "INFO")
                             or f.waived],
                "problems": r.problems,
            }
            for r in reports
        ],
    }


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start the securewsgi sample service on 127.0.0.1 (port 0, its own "
                    "temporary PKI) in server and mutual TLS mode, scan it with testssl.sh "
                    "and sslscan, print a summary table, and fail on any HIGH or CRITICAL "
                    "finding, any protocol below TLS 1.2, or any cipher without forward "
                    "secrecy.",
        epilog="Exit status: 0 passed; 1 failed (findings); 2 testssl.sh or sslscan missing, "
               "or bad arguments; 3 the audit could not run; 130 interrupted. Needs the "
               "Debian packages testssl.sh and sslscan (apt-get install testssl.sh sslscan). "
               "Takes about a minute per mode.",
    )
    parser.add_argument("--output", "-o", type=Path, metavar="FILE",
                        help="write the machine-readable summary (JSON) to FILE")
    parser.add_argument("--mode", action="append", choices=MODES, dest="modes",
                        help="TLS mode to audit; repeatable (default: server and mutual)")
    parser.add_argument("--config", type=Path, default=SAMPLE_CONFIG, metavar="FILE",
                        help="YAML service file whose settings are audited; its certificate "
                             "files, host and port are replaced (default: etc/service.yaml)")
    parser.add_argument("--key-type", choices=("ecdsa-p256", "rsa2048"), default="ecdsa-p256",
                        help="server key of the temporary PKI; the TLS 1.2 ciphers offered "
                             "depend on it (default: ecdsa-p256)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="limit for each scanner run (default: 300)")
    parser.add_argument("--testssl", metavar="PATH",
                        help="testssl.sh to use (default: testssl or testssl.sh on PATH)")
    parser.add_argument("--sslscan", metavar="PATH", help="sslscan to use (default: on PATH)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (PKI, configs, raw scanner output)")
    args = parser.parse_args(argv)
    args.modes = list(dict.fromkeys(args.modes or MODES))
    return args


def raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    scanners, missing = find_scanners(args.testssl, args.sslscan)
    if scanners is None:
        print(f"{PROG}: missing {', '.join(missing)}; install with: "
              f"apt-get install -y {' '.join(missing)}", file=sys.stderr)
        return EXIT_MISSING
    if not args.config.is_file():
        print(f"{PROG}: --config {args.config}: no such file", file=sys.stderr)
        return EXIT_MISSING
    signal.signal(signal.SIGTERM, raise_interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="tls-audit-"))
    try:
        return audit(args, scanners, workdir)
    except AuditError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, Interrupted):
        print(f"{PROG}: interrupted; servers and scans stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if args.keep:
            progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def audit(args: argparse.Namespace, scanners: Scanners, workdir: Path) -> int:
    started = time.monotonic()
    meta = {
        "tool": "tools/tls-audit",
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "securewsgi_version": securewsgi_version(),
        "config": str(args.config),
        "key_type": args.key_type,
        "testssl": {"path": str(scanners.testssl),
                    "version": tool_version([str(scanners.testssl), "--version"],
                                            r"testssl(?:\.sh)?\s+([0-9][\w.+-]*)")},
        "sslscan": {"path": str(scanners.sslscan),
                    "version": tool_version([str(scanners.sslscan), "--version"],
                                            r"(\d+\.\d+\.\d+)")},
    }
    native_mtls = testssl_has_mtls(scanners.testssl)
    meta["testssl"]["client_cert_via"] = "--mtls" if native_mtls else "openssl wrapper"
    pki = make_pki(workdir, args.key_type)
    reports = [audit_mode(mode, scanners, pki, workdir, args.config, args.timeout, native_mtls)
               for mode in args.modes]
    meta["duration_s"] = round(time.monotonic() - started, 1)
    print(f"securewsgi {meta['securewsgi_version']} TLS audit: testssl.sh "
          f"{meta['testssl']['version']}, sslscan {meta['sslscan']['version']}, "
          f"server key {args.key_type}\n")
    print(summary_table(reports))
    print(details(reports))
    summary = json_summary(reports, meta)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    verdict = "PASS" if summary["passed"] else "FAIL"
    where = f"; summary in {args.output}" if args.output else ""
    print(f"\n{PROG}: {verdict} in {meta['duration_s']:.0f}s{where}")
    return EXIT_PASS if summary["passed"] else EXIT_FINDINGS


def securewsgi_version() -> str:
    try:
        import securewsgi
    except ImportError:
        return "unknown"
    return getattr(securewsgi, "__version__", "unknown")


if __name__ == "__main__":
    sys.exit(main())
