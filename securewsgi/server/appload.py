"""Find the user's WSGI application: `module:attr`, a factory with options, or a
Paste Deploy file. Import failures become one-line `ConfigError`s under `app.*`,
pointing at the user's file and line rather than at a traceback through ours."""
from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from typing import Any

from ..config import AppConfig
from ..errors import ConfigError
from ..wsgitypes import WSGIApp


def load_app(app: AppConfig, source: Path) -> WSGIApp:
    for directory in reversed(app.python_path):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    if app.paste is not None:
        return _load_paste(app, source)
    assert app.factory is not None
    return _load_factory(app, source)


def _load_factory(app: AppConfig, source: Path) -> WSGIApp:
    module_name, _, attr_path = (app.factory or "").partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(source, "app.factory",
                              f"cannot import {module_name!r}: no module named {exc.name!r} "
                              "(check app.python_path)") from None
        raise ConfigError(source, "app.factory", _describe(f"importing {module_name!r}", exc)
                          ) from None
    except Exception as exc:
        raise ConfigError(source, "app.factory", _describe(f"importing {module_name!r}", exc)
                          ) from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(source, "app.factory",
                              f"{module_name!r} has no attribute {attr_path!r}") from None
    if app.options:
        if not callable(target):
            raise ConfigError(source, "app.options",
                              f"{app.factory} is not callable, so it takes no options")
        try:
            target = target(**app.options)
        except Exception as exc:
            raise ConfigError(source, "app.options", _describe(f"calling {app.factory}", exc)
                              ) from None
    if not callable(target):
        raise ConfigError(source, "app.factory", f"{app.factory} is not a WSGI callable")
    return target


def _load_paste(app: AppConfig, source: Path) -> WSGIApp:
    try:
        from paste.deploy import loadapp
    except ImportError:
        raise ConfigError(source, "app.paste", "PasteDeploy is not installed: "
                          "pip install 'securewsgi[paste]'") from None
    try:
        return loadapp(f"config:{app.paste}", name=app.name)
    except ConfigError:  # e.g. our own identity filter refusing its options
        raise
    except LookupError as exc:
        raise ConfigError(source, "app.paste", f"{app.paste}: {exc}") from None
    except Exception as exc:
        raise ConfigError(source, "app.paste", _describe(f"loading {app.paste}", exc)
                          ) from None


def _describe(action: str, exc: BaseException) -> str:
    """`importing 'x' raised NameError: name 'y' is not defined (at x.py:3)`."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if "importlib" not in f.filename
                   and "/securewsgi/" not in f.filename]
    if user_frames:
        where = f" (at {user_frames[-1].filename}:{user_frames[-1].lineno})"
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {exc.filename}:{exc.lineno})"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{action} raised {type(exc).__name__}: {message}{where}"
