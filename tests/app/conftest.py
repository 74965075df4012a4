"""Fixtures for the service tests: a tiny bundle built once per session, and apps/clients on it."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model.bundle import save_bundle
from model.config import preset
from model.cvae import CVAE
from model.tokenizer import Tokenizer

WORDS = ("hello hi how are you fine thanks good morning what is your name my name is anna bob "
         "do like tea coffee yes no maybe sure where going home work today tomorrow see later").split()


def synthetic_sentences(k: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(k)]


def build_tiny_bundle(out: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(synthetic_sentences(), vocab_size=64)
    model = CVAE(preset("tiny", vocab_size=tokenizer.vocab_size, max_decode_len=12))
    model.eval()
    save_bundle(out, model, tokenizer, name="tiny", text_style="plain")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


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
    import socket
    import threading

    import uvicorn

    from app.main import create_app

    stack = contextlib.ExitStack()

    def make(**overrides) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(create_app(make_settings(port=port, **overrides)), host="127.0.0.1",
                                            port=port, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(setattr, srv, "should_exit", True)
        url = f"http://127.0.0.1:{port}"
        wait_url_ready(url, timeout=20, alive=thread.is_alive)
        return url

    with stack:
        yield make


def wait_ready(client, timeout: float = 10.0) -> None:
    import time

    t0 = time.monotonic()
    while client.get("/readyz").status_code != 200:
        if time.monotonic() - t0 > timeout:
            raise AssertionError("app never became ready")
        time.sleep(0.01)


def wait_url_ready(url: str, timeout: float = 30.0, alive=lambda: True) -> None:
    """Poll GET {url}/readyz until it answers 200; fail if ``alive()`` turns false or time runs out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert alive() and time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.05)
