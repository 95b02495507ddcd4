"""Certificate rotation without a restart: rebuild the TLS context from disk on SIGHUP,
or when the files' contents change (`tls.reload_interval`).

A context is bound to a connection when the connection is wrapped, so
swapping the context used for *new* connections is the whole trick: connections
already open keep theirs. New material goes through the same checks as at start-up;
if it fails them, the old context stays and one error line says why.

Change detection hashes file *contents*, reading paths as configured (not resolved),
so a Kubernetes secret update (an atomic swap of the `..data` symlink) is seen like any
other change. A change is loaded only after it has stayed the same for one whole
interval, so an editor or a tool that writes a file in two steps is not caught
half-way; and a failed version is not retried (nor re-logged) until it changes again.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Optional

from .config import TLSConfig
from .errors import ConfigError
from .tls import ServerTLS, build_server_tls, ca_files

log = logging.getLogger("securewsgi.tls")


class TLSReloader:
    """The current `ServerTLS` of this process, replaced only by valid material."""

    def __init__(self, tls: TLSConfig, source: Path, current: ServerTLS,
                 announce: bool = True) -> None:
        self._tls = tls
        # The supervisor keeps a copy for the workers it forks; its workers say the
        # same things, so it says only what goes wrong.
        self._announce = announce
        self._source = source
        self.current = current
        self._loaded = self.fingerprint()
        self._candidate: Optional[str] = None
        self._refused: Optional[str] = None

    def for_worker(self) -> TLSReloader:
        """A copy for a worker forked from the supervisor: same material, same view of
        the files, and it says what it loads."""
        worker = copy.copy(self)
        worker._announce = True
        return worker

    def material(self) -> ServerTLS:
        """The TLS material for a new connection (called per connection: keep it cheap)."""
        return self.current

    def reload(self, why: str) -> bool:
        """Rebuild now (SIGHUP); keep the old material if the new one is invalid."""
        fingerprint = self.fingerprint()
        try:
            new = build_server_tls(self._tls, self._source)
        except ConfigError as exc:
            self._refused = fingerprint
            log.error("TLS reload (%s) failed; still serving the previous material: %s",
                      why, (exc.key and f"{exc.key}: {exc.message}") or exc.message)
            return False
        self.current = new
        self._loaded, self._refused, self._candidate = fingerprint, None, None
        cert = new.certificate
        if not self._announce:
            return True
        if cert is not None:
            log.info("TLS material reloaded (%s): certificate %s serial %X expires %s "
                     "(%d days)", why, cert.subject, cert.serial,
                     f"{cert.not_after:%Y-%m-%d}", cert.days_left())
        for warning in new.warnings:
            log.warning("%s", warning)
        return True

    def poll(self) -> None:
        """Called every `reload_interval`: reload once a change has settled."""
        fingerprint = self.fingerprint()
        if fingerprint in (self._loaded, self._refused):
            self._candidate = None
            return
        if fingerprint != self._candidate:
            self._candidate = fingerprint  # changed: wait one interval for it to settle
            return
        self.reload("files changed")

    def fingerprint(self) -> str:
        """A digest of every TLS file's current contents (missing files included)."""
        digest = hashlib.sha256()
        for path in self._files():
            digest.update(str(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:
                digest.update(f"unreadable: {exc.errno}".encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def _files(self) -> list:
        files = []
        for path in (self._tls.certfile, self._tls.keyfile, self._tls.ca_certs,
                     self._tls.crl_file):
            if path is None:
                continue
            if path.is_dir():
                files.extend(ca_files(path))
            else:
                files.append(path)
        return files
