"""Small things every layer needs, in one home: atomic file writes and the choice of a torch device."""
from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteError(OSError):
    """A file that could not be written (a full disk, a read-only folder): one line naming it. The file at that
    path, if there was one, is unchanged."""

    def __init__(self, path: str | Path, code: int, reason: str):
        super().__init__(code, reason, str(path))

    def __str__(self) -> str:
        hint = ": the disk is full" if self.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return (f"{self.filename}: cannot write ({self.strerror}, errno {self.errno}){hint}; "
                "the file there, if any, is unchanged")


def _io_errno(e: BaseException, *ours: Path) -> int | None:
    """The errno of a failed write to one of ``ours``: an OSError's (unless it names another file, which a
    writer may have failed to read), or the one safetensors puts in its message (it raises its own error type,
    'I/O error: No space left on device (os error 28)')."""
    if isinstance(e, OSError):
        return e.errno if e.filename is None or str(e.filename) in map(str, ours) else None
    m = re.search(r"\(os error (\d+)\)", str(e)) if type(e).__name__ == "SafetensorError" else None
    return int(m.group(1)) if m else None


@contextmanager
def atomic_path(path: str | Path, clean_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it over ``path`` and fsync the
    folder, so a kill at any moment leaves the old file or the new one, never a torn one. On an exception the
    temporary file is removed, and one of writing (OSError, or safetensors' error carrying an errno) is raised as
    WriteError naming ``path``. ``clean_stale`` first removes temporary files of processes killed mid-write."""
    path = Path(path)
    if clean_stale:
        for stale in path.parent.glob(path.name + ".tmp*"):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        code = None if isinstance(e, WriteError) else _io_errno(e, tmp, path)
        if code is None:
            raise
        raise WriteError(path, code, os.strerror(code)) from e
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], None]) -> None:
    """Write bytes, text (UTF-8) or whatever ``data(tmp_path)`` writes, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


class DeviceError(ValueError):
    """A device that is not there (e.g. CUDA asked of a CPU-only torch)."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; raises DeviceError with a
    one-line reason when the device is not available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this torch build has no usable CUDA device "
                              f"(torch {torch.__version__}); use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return dev
