"""The documentation (docs/source) against the code: every configuration key the code
accepts is documented, every documented key exists, and the Sphinx site builds
without a warning."""
from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from securewsgi.config import loader as config_module
from securewsgi.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "source"
REFERENCE = DOCS / "configuration.rst"

# A documented key is the first cell of a row in one of the reference's tables:
#    * - ``server.port``
_ROW = re.compile(r"^\s*\* - ``([a-z_]+\.[a-z_\[\].]+)``\s*$", re.MULTILINE)
_RULE_PREFIX = "authorization.rules[]."
# Literals that look like `section.key` but are not keys: file names (``server.pem``)
# and the standard library's ``logging.config``.
_NOT_KEYS = {"logging.config"}
_FILE_SUFFIXES = {"pem", "crt", "cer", "key", "yaml", "yml", "ini", "conf", "cfg", "json",
                  "py", "service", "socket", "log"}


@functools.lru_cache(maxsize=1)
def accepted_keys() -> frozenset[str]:
    """`section.key` for every key the service-file reader accepts (aliases included),
    and `authorization.rules[].key` for the keys of a rule.

    The readers in `_SECTIONS` record each key they take, and each alias, on their
    `_Section` before `finish` rejects what is left as unknown: the same list that
    gives the "unknown key (did you mean ...)" errors. Each reader runs once on an empty
    section; one that then misses a required key raises after `finish`, which is fine.
    """
    seen: dict[str, list[str]] = {}
    section_class: Any = config_module._Section
    original_finish = section_class.finish

    def recording_finish(self: Any) -> None:
        keys = seen.setdefault(self.name, [])
        for key in [*self.known, *getattr(self, "aliases", ())]:
            if key not in keys:
                keys.append(key)
        original_finish(self)

    source = REFERENCE.with_name("probe.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(section_class, "finish", recording_finish)
        for name, reader in config_module._SECTIONS.items():
            with contextlib.suppress(ConfigError):
                reader(source, {})
            assert name in seen, f"the {name} reader never reached _Section.finish"
        rule_keys = getattr(config_module, "RULE_KEYS", None)
        if rule_keys is None:
            config_module.read_rule(source, "authorization.rules[0]",
                                    {"name": "probe", "paths": ["/"]})
            rule_keys = seen["authorization.rules[probe]"]
    keys = {f"{name}.{key}" for name in config_module._SECTIONS for key in seen[name]}
    keys |= {_RULE_PREFIX + key for key in rule_keys}
    return frozenset(keys)


def documented_keys() -> list[str]:
    return _ROW.findall(REFERENCE.read_text(encoding="utf-8"))


def test_every_accepted_key_is_documented() -> None:
    missing = sorted(accepted_keys() - set(documented_keys()))
    assert not missing, (
        f"configuration keys the code accepts but {REFERENCE.relative_to(REPO)} does not "
        f"document (add a row '* - ``section.key``' with type, default, meaning): {missing}")


def test_every_documented_key_exists() -> None:
    documented = documented_keys()
    assert documented, f"no '* - ``section.key``' rows found in {REFERENCE}"
    unknown = sorted(set(documented) - accepted_keys())
    assert not unknown, f"{REFERENCE.relative_to(REPO)} documents keys the code does " \
                        f"not accept: {unknown}"
    twice = sorted({key for key in documented if documented.count(key) > 1})
    assert not twice, f"documented more than once: {twice}"


def test_key_names_in_the_docs_exist() -> None:
    """A ``section.key`` written anywhere in the docs or the README names a real key,
    so a renamed or removed key leaves no stale mention behind."""
    sections = "|".join(config_module._SECTIONS)
    mention = re.compile(rf"``((?:{sections})\.[a-z_]+)``")
    known = {key for key in accepted_keys() if not key.startswith(_RULE_PREFIX)}
    stale = []
    for page in [REPO / "README.rst", *sorted(DOCS.glob("*.rst"))]:
        for key in mention.findall(page.read_text(encoding="utf-8")):
            if key in _NOT_KEYS or key.rsplit(".", 1)[1] in _FILE_SUFFIXES:
                continue
            if key not in known:
                stale.append(f"{page.relative_to(REPO)}: {key}")
    assert not stale, f"unknown configuration keys named in the docs: {stale}"


def test_allow_fields_are_documented() -> None:
    text = (DOCS / "identity.rst").read_text(encoding="utf-8")
    missing = [f for f in config_module.ALLOW_FIELDS if f"``{f}``" not in text
               and f"``{f}: true``" not in text]
    assert not missing, f"allow-entry fields missing from docs/source/identity.rst: {missing}"


def test_client_keys_are_documented() -> None:
    """The keys of a client file (`session(config=...)`) and of `securewsgi-check
    --json`, which clients.rst lists."""
    from securewsgi.client import CONFIG_KEYS
    from securewsgi.client.diagnose import JSON_KEYS

    text = (DOCS / "clients.rst").read_text(encoding="utf-8")
    missing = [key for key in (*CONFIG_KEYS, *JSON_KEYS) if f"``{key}``" not in text]
    assert not missing, f"keys missing from docs/source/clients.rst: {missing}"


def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS),
         str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"sphinx-build -W failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "html" / "index.html").is_file()
