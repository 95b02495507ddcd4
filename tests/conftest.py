"""Shared fixtures: one test PKI per session; servers are started per test module."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from support import ENGINES, PKIFiles, ServerProcess


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return PKIFiles(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every server-level test runs on each engine (`server.engine`): a test that holds
    on one and not the other has found a defect in that engine."""
    return request.param


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory, engine: str
                 ) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers for a test module; all are stopped (by PID) when it ends."""
    started: list[ServerProcess] = []

    def start(config: dict[str, Any], name: str = "service", **kwargs: Any) -> ServerProcess:
        directory: Path = tmp_path_factory.mktemp(name)
        kwargs.setdefault("engine", engine)
        server = ServerProcess(directory, config, name=name, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
