"""tools/tls-audit end to end: real scanners against a real securewsgi server.

Slow (about 70 s: testssl.sh is a bash script that opens hundreds of connections), so it
carries the `audit` mark: `pytest -m "not audit"` leaves it out. It needs the Debian
packages testssl.sh and sslscan, which .ci/run installs; without them it is skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from securewsgi.tls.context import DEFAULT_CIPHERS

REPO = Path(__file__).resolve().parent.parent
TLS_AUDIT = REPO / "tools" / "tls-audit"
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256"}

_MISSING = [pkg for pkg, names in (("testssl.sh", ("testssl", "testssl.sh")),
                                   ("sslscan", ("sslscan",)))
            if not any(shutil.which(name) for name in names)]


@pytest.mark.audit
@pytest.mark.skipif(bool(_MISSING), reason=f"needs the Debian package(s) {', '.join(_MISSING)}"
                    f" (apt-get install -y {' '.join(_MISSING)}); .ci/run installs them")
def test_tls_audit_passes_on_the_sample_service(tmp_path: Path) -> None:
    """The defaults pass both scanners in both modes, and the JSON says why."""
    assert os.access(TLS_AUDIT, os.X_OK), "tools/tls-audit must be executable"
    summary_path = tmp_path / "audit.json"
    proc = subprocess.run(
        [sys.executable, str(TLS_AUDIT), "--output", str(summary_path)],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "mode" in proc.stdout and "protocols" in proc.stdout  # the summary table

    summary = json.loads(summary_path.read_text())
    assert summary["passed"] is True
    assert [m["mode"] for m in summary["modes"]] == ["server", "mutual"]
    default_tls12 = set(DEFAULT_CIPHERS.split(":"))
    for mode in summary["modes"]:
        name = mode["mode"]
        assert mode["passed"] is True and mode["problems"] == [], name
        assert mode["protocols"] == ["TLSv1.2", "TLSv1.3"], name
        # the scanners finished handshakes (in mutual mode: with the client certificate)
        assert mode["http_checked"] is True, name
        counts = mode["findings_by_severity"]
        assert counts["CRITICAL"] == 0 and counts["HIGH"] == 0, (name, mode["findings"])
        ciphers = mode["ciphers"]
        assert ciphers and all(c["forward_secrecy"] for c in ciphers), (name, ciphers)
        # both scanners agree on every cipher, and each is one securewsgi configured
        assert all(c["seen_by"] == ["sslscan", "testssl"] for c in ciphers), (name, ciphers)
        tls12 = {c["name"] for c in ciphers if c["protocol"] == "TLSv1.2"}
        tls13 = {c["name"] for c in ciphers if c["protocol"] == "TLSv1.3"}
        assert tls12 and tls12 <= default_tls12, (name, tls12)
        assert tls13 == TLS13_SUITES, (name, tls13)
        waived = [f for f in mode["findings"] if f["waived"]]
        assert {f["id"] for f in waived} <= {"cert_revocation"}, (name, waived)
