"""Paste Deploy server: `[server:main]` with `use = egg:securewsgi#main` and
`config = service.yaml` serves the INI's application through securewsgi, with the
service file's TLS, identity, authorization, engine and logging.

It is a `paste.server_factory` (not a `paste.server_runner`): launchers such as
`pserve` call `loadserver` before `loadapp`, so the service file is validated, and
eventlet's monkey patching done, before the application is imported, exactly as
`securewsgi-run` orders them. The server it returns then serves the app object the
launcher loaded; the service file's own `app` section is not used.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

# Imported here, before the factory patches: like `securewsgi-run`, securewsgi's own
# modules load before eventlet's monkey patching, and some keep an original function
# on purpose (accesslog's os.write).
from .. import engines
from ..config import Config
from ..config.loader import config_from_dict, read_sections
from ..errors import ConfigError, StartupError
from ..logs import setup_logging
from ..wsgitypes import WSGIApp
from .service import serve

log = logging.getLogger("securewsgi.paste")

# The app the launcher passed in. `serve` loads `app.factory` in every worker (after
# fork, too); pointing it here hands each worker this object.
launcher_app: Optional[WSGIApp] = None
LAUNCHER_APP = f"{__name__}:launcher_app"


def server_factory(global_conf: Mapping[str, Any], **local_conf: Any) -> PasteServer:
    """`egg:securewsgi#main`: read and check the service file named by `config`."""
    ini = _ini_file(global_conf)
    for option in local_conf:
        if option != "config":
            raise ConfigError(ini, option, "unknown option of egg:securewsgi#main "
                              "(securewsgi reads its settings from the file named by "
                              "`config`)")
    if not str(local_conf.get("config") or "").strip():
        raise ConfigError(ini, "config", "egg:securewsgi#main needs `config = FILE`, the "
                          "securewsgi service file (relative to this file's directory)")
    service = _relative_to(ini, str(local_conf["config"]).strip())
    config, ignored_app = load_service_config(service)
    # eventlet patches before the launcher imports the app (it loads the server first).
    engines.load(config.server.engine).prepare_process(config.server, forked=False)
    return PasteServer(config, ini, ignored_app)


def load_service_config(path: Path) -> tuple[Config, bool]:
    """(the service file's Config serving the launcher's app, whether the file had an
    `app` section of its own). That section is dropped unvalidated: the INI names the
    application, and one service file can then serve `securewsgi-run` and a launcher."""
    source, data = read_sections(path)
    had_app = data.pop("app", None) is not None
    data["app"] = {"factory": LAUNCHER_APP}
    return config_from_dict(source, data), had_app


class PasteServer:
    """What `loadserver` returns: calling it with the app serves until SIGTERM/SIGINT
    (graceful stop, as `securewsgi-run`). A non-zero exit code, or a configuration or
    start-up error (printed as its one line), ends the process with that code."""

    def __init__(self, config: Config, ini: Optional[Path], ignored_app: bool) -> None:
        self.config = config
        self.ini = ini
        self.ignored_app = ignored_app

    def __repr__(self) -> str:
        return f"<securewsgi server for {self.config.source}>"

    def __call__(self, app: WSGIApp) -> None:
        global launcher_app
        launcher_app = app
        try:
            setup_logging(self.config.logging)  # for the lines below; serve repeats it
            where = f" from {self.ini}" if self.ini is not None else ""
            note = (f"; the app section of {self.config.source.name} is ignored"
                    if self.ignored_app else "")
            log.info("serving the app the Paste Deploy launcher loaded%s%s", where, note)
            code = serve(self.config)
        except (ConfigError, StartupError) as exc:
            print(f"securewsgi: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        if code:
            raise SystemExit(code)


def _ini_file(global_conf: Mapping[str, Any]) -> Optional[Path]:
    file = global_conf.get("__file__")
    return Path(os.path.abspath(file)) if file else None


def _relative_to(ini: Optional[Path], value: str) -> Path:
    """`config` is relative to the INI file's directory, as Paste's `%(here)s` is."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = (ini.parent if ini is not None else Path.cwd()) / path
    return Path(os.path.normpath(path))
