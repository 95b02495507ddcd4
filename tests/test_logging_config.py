"""`logging.config_file` (dictConfig YAML or fileConfig INI instead of securewsgi's own
handler) and `wsgi.errors` as records of the `securewsgi.app` logger, one per line, on
real servers of both engines."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from support import PKIFiles, run_command, session, stop_process, wait_for

from securewsgi.config import load_config
from securewsgi.errors import ConfigError
from securewsgi.logs import ErrorsStream

CONCURRENT = 8

ERRORS_APP = f'''
"""Writes to wsgi.errors the ways apps do: pieces of a line, several lines at once,
writelines, flush; /interleave holds {CONCURRENT} requests between the two halves of
their line, so each half-line waits while the others write theirs."""
import threading

barrier = threading.Barrier({CONCURRENT}, timeout=20)


def app(environ, start_response):
    errors = environ["wsgi.errors"]
    status = "200 OK"
    if environ["PATH_INFO"] == "/lines":
        errors.write("part one ")
        errors.write("and two\\nsecond line\\n")
        errors.writelines(["third\\n", "unterminated"])
        errors.flush()
    elif environ["PATH_INFO"] == "/interleave":
        tag = environ["QUERY_STRING"]
        errors.write(f"request {{tag}} begins, ")
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            status = "500 Internal Server Error"
        errors.write(f"request {{tag}} ends\\n")
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\\n"]
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("errapp")
    (directory / "errapp.py").write_text(ERRORS_APP)
    return directory


def _app_section(app_dir: Path) -> dict:
    return {"factory": "errapp:app", "python_path": [str(app_dir)]}


# ------------------------------------------------------------------ wsgi.errors


def test_wsgi_errors_lines_are_json_error_records(start_server, test_pki: PKIFiles,
                                                  app_dir: Path) -> None:
    server = start_server({"tls": test_pki.tls_section(), "app": _app_section(app_dir),
                           "logging": {"format": "json"}})
    with session(test_pki.ca_pem, test_pki.clients["alice"]) as client:
        assert client.get(server.url("/lines"), timeout=10).status_code == 200

    def app_records() -> list:
        records = [json.loads(line) for line in server.stderr.splitlines()
                   if line.startswith("{")]
        found = [r for r in records if r["logger"] == "securewsgi.app"]
        return found if len(found) >= 4 else []

    records = wait_for(app_records, what="four securewsgi.app records")
    assert [r["message"] for r in records] == ["part one and two", "second line", "third",
                                               "unterminated"]
    assert {r["level"] for r in records} == {"ERROR"}
    assert "part one" not in server.stdout  # not raw text on a stream


def test_partial_lines_of_concurrent_requests_never_splice(start_server, test_pki: PKIFiles,
                                                           app_dir: Path) -> None:
    server = start_server({"tls": test_pki.tls_section(), "app": _app_section(app_dir)})

    def call(tag: int) -> int:
        with session(test_pki.ca_pem, test_pki.clients["bob"]) as client:
            return client.get(server.url(f"/interleave?{tag}"), timeout=30).status_code

    with ThreadPoolExecutor(CONCURRENT) as pool:
        assert list(pool.map(call, range(CONCURRENT))) == [200] * CONCURRENT
    pattern = re.compile(r" ERROR securewsgi\.app (.*)$", re.M)
    lines = wait_for(lambda: len(pattern.findall(server.stderr)) >= CONCURRENT and
                     pattern.findall(server.stderr), what="every request's line")
    assert sorted(lines) == sorted(f"request {tag} begins, request {tag} ends"
                                   for tag in range(CONCURRENT))


def _capture(logger_name: str) -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return records


def test_errors_stream_buffers_per_thread_and_bounds_a_line() -> None:
    records = _capture("test.errors.stream")
    stream = ErrorsStream(logging.getLogger("test.errors.stream"), max_line=100)
    start = threading.Barrier(4)

    def writer(tag: int) -> None:
        start.wait()
        for i in range(200):
            stream.write(f"t{tag} ")
            stream.write(f"n{i}")
            stream.write("\r\n")

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 800
    assert all(re.fullmatch(r"t\d n\d+", m) for m in messages), messages[:5]
    assert {r.levelno for r in records} == {logging.ERROR}
    records.clear()
    stream.write(b"bytes are decoded\n")
    stream.write("x" * 60)
    stream.write("x" * 60)  # no newline, but past max_line: emitted, buffer emptied
    stream.write("y" * 10)
    stream.flush()
    assert [len(r.getMessage()) for r in records] == [17, 120, 10]
    assert stream.write("\n\n") == 2 and len(records) == 3  # empty lines are not records


# ------------------------------------------------------------- logging.config_file

DICT_CONFIG = """
version: 1
formatters:
  plain: {format: "%(levelname)s|%(name)s|%(message)s"}
handlers:
  file: {class: logging.FileHandler, filename: LOGFILE, formatter: plain}
root:
  level: INFO
  handlers: [file]
"""

FILE_CONFIG = """
[loggers]
keys = root

[handlers]
keys = file

[formatters]
keys = plain

[logger_root]
level = INFO
handlers = file

[handler_file]
class = FileHandler
args = ('%(here)s/LOGNAME', 'a')
formatter = plain

[formatter_plain]
format = %(levelname)s|%(name)s|%(message)s
"""


def _write_logging_file(directory: Path, form: str) -> tuple[str, Path]:
    """(value for logging.config_file, the log file it writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / "app.log"
    if form == "yaml":
        (directory / "logging.yaml").write_text(DICT_CONFIG.replace("LOGFILE", str(log_file)))
        return "logconf/logging.yaml", log_file
    (directory / "logging.ini").write_text(FILE_CONFIG.replace("LOGNAME", log_file.name))
    return "logconf/logging.ini", log_file


@pytest.mark.parametrize("form", ["yaml", "ini"])
def test_logging_config_file_replaces_the_own_handler(tmp_path: Path, test_pki: PKIFiles,
                                                      app_dir: Path, engine: str,
                                                      form: str) -> None:
    """The file configures only the root logger: securewsgi's loggers, created before
    it was applied, still reach it (they are not disabled), and nothing of securewsgi's
    own goes to stderr."""
    value, log_file = _write_logging_file(tmp_path / "logconf", form)
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump({
        "server": {"port": 0, "engine": engine}, "tls": test_pki.tls_section(),
        "app": _app_section(app_dir), "logging": {"config_file": value,
                                                  "access_log": False}}))
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "securewsgi", "--config",
                                 str(service)], stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, PYTHONWARNINGS="ignore"))
    try:
        def port() -> int:
            if proc.poll() is not None:
                raise AssertionError(err_path.read_text())
            text = log_file.read_text() if log_file.exists() else ""
            match = re.search(r"INFO\|securewsgi\.server\|.*listening on https://"
                              r"127\.0\.0\.1:(\d+)", text)
            return int(match.group(1)) if match else 0

        listening = wait_for(port, 20, what="the listening line in the log file")
        with session(test_pki.ca_pem, test_pki.clients["alice"]) as client:
            reply = client.get(f"https://localhost:{listening}/lines", timeout=10)
        assert reply.status_code == 200
        wait_for(lambda: "ERROR|securewsgi.app|unterminated" in log_file.read_text(),
                 what="the app's wsgi.errors lines in the log file")
        text = log_file.read_text()
        for line in ("part one and two", "second line", "third"):
            assert f"ERROR|securewsgi.app|{line}\n" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, err_path.read_text()
    finally:
        stop_process(proc, 20)
    assert "INFO|securewsgi.server|stopped" in log_file.read_text()
    assert "securewsgi" not in err_path.read_text()


@pytest.fixture()
def service(tmp_path: Path, test_pki: PKIFiles):
    def write(logging_section: str, name: str = "service.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(f"""\
            server:
              engine: threads
            tls:
              certfile: {test_pki.server_cert}
              keyfile: {test_pki.server_key}
            app:
              factory: securewsgi.demo:app
            logging:
            """) + textwrap.indent(textwrap.dedent(logging_section), "  "))
        return path

    return write


def test_config_file_is_relative_to_the_service_file(service, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "log.yml").write_text("version: 1\n")
    config = load_config(service("config_file: conf/log.yml\nformat: json\n"))
    assert config.logging.config_file == tmp_path / "conf" / "log.yml"
    assert config.logging.format == "json"  # still the access log's format


@pytest.mark.parametrize(("name", "content", "cause"), [
    ("absent.yaml", None, "no such file or directory"),
    ("log.yaml", "version: [1\n", "invalid YAML: line 2, column 1"),
    ("log.yaml", "handlers: {}\n", "dictConfig needs 'version: 1', got None"),
    ("log.yaml", "- version: 1\n", "expected a logging.config.dictConfig mapping"),
    ("log.json", '{"version": 1, "handlers": []}', "handlers: expected a mapping"),
    ("log.ini", "[loggers]\nkeys = root\n", "fileConfig needs a [handlers] section"),
    ("log.ini", "[loggers]\nkeys = app\n[handlers]\nkeys =\n[formatters]\nkeys =\n",
     "fileConfig needs 'root' in [loggers] keys"),
    ("log.ini", "keys = root\n", "invalid INI: File contains no section headers"),
    ("log.toml", "version = 1\n", "unknown file type"),
])
def test_a_bad_logging_file_is_one_config_error(service, tmp_path: Path, name: str,
                                                content: str, cause: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    path = service(f"config_file: {name}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: logging.config_file: ")
    assert cause in message and "\n" not in message


def test_level_next_to_config_file_is_refused(service, tmp_path: Path) -> None:
    (tmp_path / "log.yaml").write_text("version: 1\n")
    path = service("config_file: log.yaml\nlevel: DEBUG\n")
    with pytest.raises(ConfigError, match=r"logging\.level: has no effect with "
                                          r"logging\.config_file"):
        load_config(path)
    result = run_command("securewsgi-run", "--config", str(service(
        "config_file: log.yaml\n")), "--log-level", "DEBUG", "--check")
    assert result.returncode == 2
    assert result.stderr.strip() == ("securewsgi-run: --log-level: has no effect with "
                                     "logging.config_file: set the levels in that file")


@pytest.mark.parametrize(("content", "cause"), [
    ("version: 1\nhandlers:\n  h: {class: no.such.Handler}\nroot: {handlers: [h]}\n",
     "Unable to configure handler 'h'"),
    ("version: 1\nhandlers:\n  h: {class: logging.FileHandler, filename: /nonexistent/x."
     "log}\n", "No such file or directory"),
    ("version: 1\nroot: {handlers: [missing]}\n", "Unable to configure root logger"),
])
def test_check_and_start_apply_the_file(service, tmp_path: Path, content: str,
                                        cause: str) -> None:
    """What only applying can find (a handler class that does not import, a log
    directory that does not exist) is a one-line error at --check and at start."""
    (tmp_path / "log.yaml").write_text(content)
    path = service("config_file: log.yaml\n")
    load_config(path)  # the shape is fine
    for flags in (["--check"], []):
        result = run_command("securewsgi-run", "--config", str(path), *flags, timeout=30)
        assert result.returncode == 2, (flags, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"securewsgi-run: logging.config_file: "
                                   f"{tmp_path / 'log.yaml'}: ")
        assert cause in lines[0]


def test_check_reports_the_logging_file(service, tmp_path: Path) -> None:
    (tmp_path / "log.ini").write_text(FILE_CONFIG.replace("LOGNAME", "x.log"))
    result = run_command("securewsgi-run", "--config",
                         str(service("config_file: log.ini\n")), "--check")
    assert result.returncode == 0, result.stderr
    assert f"logging: configured by {tmp_path / 'log.ini'}" in result.stdout
