"""A live server for tests, benchmarks and the reliability tools: a free loopback port, the readiness poll, an
app under uvicorn in a thread of this process, ``python -m app serve`` as a child process, and its memory. The
one home of each (tests, benchmarks/, reliability/ and scripts/ use these)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotReady(RuntimeError):
    """The server did not answer /readyz with 200 in time, or stopped before it did."""


def wait_ready(url: str, timeout: float = 120.0, alive: Callable[[], bool] = lambda: True,
               why: Callable[[], str] = lambda: "", get: Callable[[str], Any] | None = None) -> None:
    """Poll GET {url}/readyz until it answers 200. Raises NotReady when ``alive()`` turns false or ``timeout``
    seconds pass, with ``why()`` (a log tail, say) in the message. ``get``: another client's get (a
    TestClient's, with url "")."""
    get = get or (lambda u: httpx.get(u, timeout=2))
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise NotReady(f"server at {url} stopped before it was ready{why()}")
        if time.monotonic() > deadline:
            raise NotReady(f"server at {url} not ready after {timeout:g} s{why()}")
        time.sleep(0.05)


@contextlib.contextmanager
def serve_in_thread(app: Any, timeout: float = 120.0) -> Iterator[str]:
    """``app`` (ASGI) under uvicorn in a daemon thread of this process, on a free loopback port: yields its URL
    once /readyz answers 200, and stops the server after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout, alive=thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux /proc), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Server:
    """``with Server(["--bundle", DIR]) as srv:`` starts the server, waits for /readyz 200, and on exit
    sends SIGTERM (then SIGKILL after ``stop_timeout``). Its log goes to a temporary file (``srv.log()``),
    never to a pipe that could fill up and block it. ``user``: run it as that uid (and the group of the same
    id, no other groups), which needs root. ``command``: the program in place of ``python -m app`` (an installed
    ``cvae-dialog``), run in ``cwd`` (default: the checkout)."""

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None,
                 ready_timeout: float = 120.0, stop_timeout: float = 30.0, user: int | None = None,
                 command: list[str] | None = None, cwd: str | Path | None = None):
        self.command = list(command or [sys.executable, "-m", "app"])
        self.cwd = Path(cwd) if cwd is not None else ROOT
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args or [])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOG_")}
        self.env.update(env or {})
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="cvae-server-", suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "Server":
        cmd = [*self.command, "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        as_user = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     **as_user)
        proc = self.proc
        try:
            wait_ready(self.url, self.ready_timeout, alive=lambda: proc.poll() is None,
                       why=lambda: f" (exit status {proc.poll()}):\n{self.log()[-3000:]}")
        except NotReady:
            self.kill()
            raise
        return self

    def terminate(self, timeout: float | None = None) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds until exit). SIGKILL if it outlives ``timeout``."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.terminate()
        finally:
            self.kill()
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
