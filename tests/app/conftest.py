"""Fixtures for the service tests: apps, clients and servers on the tiny bundle (tests/conftest.py)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def make_settings(tiny_bundle: Path):
    """Settings on the tiny bundle, ignoring any DIALOG_* variables of the environment."""
    from app.settings import Settings

    def make(**overrides) -> Settings:
        base = dict(bundle=tiny_bundle, device="cpu", torch_threads=1, max_wait_ms=2.0)
        return Settings.model_validate({**base, **overrides})

    return make


@pytest.fixture
def make_client(make_settings):
    """make_client(**settings) -> context manager: a TestClient (lifespan running) once the app is ready."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    @contextlib.contextmanager
    def make(ready: bool = True, **overrides) -> Iterator[TestClient]:
        with TestClient(create_app(make_settings(**overrides))) as c:
            if ready:
                wait_ready(c)
            yield c

    return make


@pytest.fixture
def client(make_client) -> Iterator:
    with make_client() as c:
        yield c


@pytest.fixture
def make_server(make_settings):
    """make_server(**settings) -> the URL of a live uvicorn server (in a thread, on a free port) on the tiny
    bundle, once /readyz answers 200; every server it started stops after the test."""
    from app.main import create_app
    from harness.server import serve_in_thread

    with contextlib.ExitStack() as stack:
        yield lambda **overrides: stack.enter_context(serve_in_thread(create_app(make_settings(**overrides)), 20))


def wait_ready(client, timeout: float = 10.0) -> None:
    """Until the app behind a TestClient is ready (harness.server.wait_ready through the client)."""
    from harness.server import wait_ready as poll

    poll("", timeout, get=client.get)


@pytest.fixture
def empty_rows(monkeypatch):
    """empty_rows(every=2): from now on every ``every``-th decoded row (1: all) comes out empty."""
    import model.decoding

    decode = model.decoding.decode

    def install(every: int = 2) -> None:
        def emptied(*args, **kwargs):
            out = decode(*args, **kwargs)
            out.tokens = [[] if i % every == every - 1 else t for i, t in enumerate(out.tokens)]
            return out

        monkeypatch.setattr(model.decoding, "decode", emptied)

    return install
