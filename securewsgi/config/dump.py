"""The effective configuration as a service file (`securewsgi-run --print-config`).

What an operator debugs is the configuration after `${VAR}` expansion, command-line
overrides, aliases and defaults, with every path absolute. The output is YAML that
`load_config` reads back into the same `Config` (secrets excepted: they are masked),
so it can be kept as the service file actually in force.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .schema import AllowEntry, Config, RuleConfig

MASK = "********"
# Values that must never reach a terminal or a ticket.
SECRETS = {("tls", "key_password")}


def config_to_data(config: Config) -> dict[str, Any]:
    """The sections of `config` as plain YAML-able data, in service-file form."""
    data: dict[str, Any] = {}
    for section_field in dataclasses.fields(config):
        if section_field.name == "source":
            continue
        section = getattr(config, section_field.name)
        if dataclasses.is_dataclass(section):
            data[section_field.name] = _section(section_field.name, section)
    return data


def dump_config(config: Config) -> str:
    """`config_to_data` as YAML, headed by a comment naming the file it came from."""
    body = yaml.safe_dump(config_to_data(config), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)
    return (f"# effective configuration of {config.source} (securewsgi-run --print-config)\n"
            f"# defaults included; unset optional keys omitted; secrets masked\n{body}")


def _section(name: str, section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if (name, item.name) in SECRETS:
            if value is not None:
                out[item.name] = MASK
            continue
        special = _SPECIAL.get((name, item.name))
        if special is not None:
            value = special(section, value)
            if value is _OMIT:
                continue
        elif value is None and item.default is None:
            continue  # unset optional key: the same as leaving it out of the file
        out[item.name] = _plain(value)
    return out


_OMIT = object()


def _session_tickets(_section: Any, value: Any) -> Any:
    return "auto" if value is None else value


def _access_log(_section: Any, value: Any) -> Any:
    return False if value is None else _plain(value)


def _monkey_patch(section: Any, value: Any) -> Any:
    # Written as `true` next to `engine: threads` it is refused; its default means
    # nothing there, so the effective file leaves it out.
    return _OMIT if section.engine != "eventlet" and value else value


def _log_level(section: Any, value: Any) -> Any:
    # A logging config file sets the levels; a level next to it is refused.
    return _OMIT if section.config_file is not None else value


def _metrics_host(section: Any, value: Any) -> Any:
    # Without a port metrics are off, and a host next to no port is refused.
    return _OMIT if section.port is None else value


def _app_value(_section: Any, value: Any) -> Any:
    # factory and paste exclude each other even as nulls; options only go with factory.
    return _OMIT if value is None or value == {} else _plain(value)


_SPECIAL = {
    ("tls", "session_tickets"): _session_tickets,
    ("logging", "access_log"): _access_log,
    ("server", "monkey_patch"): _monkey_patch,
    ("logging", "level"): _log_level,
    ("app", "factory"): _app_value,
    ("app", "paste"): _app_value,
    ("app", "options"): _app_value,
    ("metrics", "host"): _metrics_host,
}


def _plain(value: Any) -> Any:
    """Typed config values as YAML scalars, lists and mappings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, AllowEntry):
        return {key: True if key in ("any", "anonymous") else pattern
                for key, pattern in value.conditions}
    if isinstance(value, RuleConfig):
        rule: dict[str, Any] = {"name": value.name, "paths": list(value.paths)}
        if value.methods:
            rule["methods"] = list(value.methods)
        rule["allow"] = [_plain(entry) for entry in value.allow]
        return rule
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
