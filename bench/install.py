"""`python -m bench --setup`: install what the targets need, only when asked.

A benchmark run never installs anything; it names the command instead. This is that
command. Each step prints what it runs:

1. Debian packages nginx, wrk, apache2-utils (ab), apache2 + apache2-dev (mod_wsgi
   builds against them), gcc + libssl-dev (uwsgi's --https, bench/wrkcert.c), linux-perf
   (CPU by component), when one is missing and we are root (otherwise the apt-get
   line is printed to run);
2. bench/requirements.txt into this interpreter's environment (cheroot, uwsgi,
   mod_wsgi, matplotlib, py-spy);
3. one venv per gunicorn version under bench/.venvs/ (they cannot share one);
4. bench/.build/wrkcert.so, the client-certificate shim for wrk.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import wrk
from .targets import BENCH_DIR, VENVS_DIR

APT_PACKAGES = {"nginx": "nginx", "ab": "apache2-utils", "wrk": "wrk", "apache2": "apache2",
                "apxs": "apache2-dev", "gcc": "gcc", "perf": "linux-perf"}
OPENSSL_HEADER = Path("/usr/include/openssl/ssl.h")
VENVS = {
    "gunicorn-eventlet": BENCH_DIR / "requirements-gunicorn-eventlet.txt",
    "gunicorn-gthread": BENCH_DIR / "requirements-gunicorn-gthread.txt",
}
STEP_TIMEOUT = 1200  # seconds: uwsgi compiles from source


def _run(argv: list[str]) -> bool:
    print("+ " + " ".join(argv), flush=True)
    try:
        return subprocess.run(argv, timeout=STEP_TIMEOUT, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        print(f"setup: timed out after {STEP_TIMEOUT}s", file=sys.stderr)
        return False


def missing_apt_packages() -> list[str]:
    packages = [pkg for tool, pkg in APT_PACKAGES.items()
                if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    if not OPENSSL_HEADER.exists():
        packages.append("libssl-dev")
    return packages


def install_apt(packages: list[str]) -> bool:
    if not packages:
        return True
    command = ["apt-get", "install", "-y", *packages]
    if os.geteuid() != 0:
        print(f"setup: not root; run: sudo {' '.join(command)}", file=sys.stderr)
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("+ apt-get update", flush=True)
    subprocess.run(["apt-get", "update"], timeout=STEP_TIMEOUT, check=False, env=env)
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, timeout=STEP_TIMEOUT, check=False, env=env).returncode == 0


def create_venv(name: str, requirements: Path) -> bool:
    """bench/.venvs/NAME from this interpreter (same Python for every target)."""
    venv = VENVS_DIR / name
    if not (venv / "bin" / "python").exists() and not _run(
            [sys.executable, "-m", "venv", str(venv)]):
        return False
    return _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-r", str(requirements)])


def run_setup() -> int:
    ok = install_apt(missing_apt_packages())
    ok = _run([sys.executable, "-m", "pip", "install", "-r",
               str(BENCH_DIR / "requirements.txt")]) and ok
    for name, requirements in VENVS.items():
        ok = create_venv(name, requirements) and ok
    problem = wrk.build_shim()
    if problem:
        print(f"setup: {problem}", file=sys.stderr)
    ok = problem is None and ok
    print("setup: done" if ok else "setup: some steps failed (see above)")
    return 0 if ok else 1
