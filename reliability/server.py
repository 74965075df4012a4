"""A live server for tests, benchmarks and the reliability tools: a free loopback port, the readiness poll,
``python -m app serve`` as a child process, and its memory. The one home of each (tests/app, benchmarks/serve.py,
benchmarks/loop_stall.py and reliability/ use these)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotReady(RuntimeError):
    """The server did not answer /readyz with 200 in time, or stopped before it did."""


def wait_ready(url: str, timeout: float = 120.0, alive: Callable[[], bool] = lambda: True,
               why: Callable[[], str] = lambda: "") -> None:
    """Poll GET {url}/readyz until it answers 200. Raises NotReady when ``alive()`` turns false or ``timeout``
    seconds pass, with ``why()`` (a log tail, say) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise NotReady(f"server at {url} stopped before it was ready{why()}")
        if time.monotonic() > deadline:
            raise NotReady(f"server at {url} not ready after {timeout:g} s{why()}")
        time.sleep(0.05)


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
    id, no other groups), which needs root."""

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None,
                 ready_timeout: float = 120.0, stop_timeout: float = 30.0, user: int | None = None):
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
        cmd = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        as_user = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
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
