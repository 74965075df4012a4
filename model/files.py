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
    """A file that could not be written (a full disk, a read-only folder): one line naming it, and saying what
    became of the file (``note``; by default that of an atomic write: the file there is unchanged)."""

    def __init__(self, path: str | Path, code: int, reason: str, note: str = "the file there, if any, is unchanged"):
        super().__init__(code, reason, str(path))
        self.note = note

    def __str__(self) -> str:
        hint = ": the disk is full" if self.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"{self.filename}: cannot write ({self.strerror}, errno {self.errno}){hint}; {self.note}"


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


class StagedFiles:
    """New contents for several files of one folder, each written to a temporary file beside its target; see
    :func:`staged_files`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.staged: dict[str, Path] = {}
        self.removed: list[str] = []
        self.current: str | None = None  # the file being written: the one a failure names

    def path(self, name: str) -> Path:
        """The temporary path to write ``name``'s new content to."""
        if name not in self.staged:
            self.staged[name] = self.folder / f"{name}.tmp{os.getpid()}"
        self.current = name
        return self.staged[name]

    def remove(self, name: str) -> None:
        """Delete ``name`` when the files are put in place."""
        self.removed.append(name)


@contextmanager
def staged_files(folder: str | Path, mode: int | None = None) -> Iterator[StagedFiles]:
    """Replace several files of ``folder`` together: the block writes each new file to ``staged.path(name)``;
    when it ends, every staged file is fsynced (and given ``mode``), and only then renamed into place, in the
    order staged, so put the file that vouches for the others (a manifest) last. A failure while staging (a
    full disk) leaves every file of the folder as it was, removes the temporary files and raises WriteError
    naming the file being written. The renames need no space; a kill between two of them can leave a folder
    with some files new (a manifest then fails to verify)."""
    folder = Path(folder)
    staged = StagedFiles(folder)
    try:
        yield staged
        for name, tmp in staged.staged.items():
            staged.current = name
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
    except BaseException as e:
        for tmp in staged.staged.values():
            tmp.unlink(missing_ok=True)
        failed = staged.current
        code = None if failed is None else _io_errno(e, *staged.staged.values())
        if failed is None or code is None:
            raise
        raise WriteError(folder / failed, code, os.strerror(code)) from e
    for name, tmp in staged.staged.items():
        os.replace(tmp, folder / name)
    for name in staged.removed:
        (folder / name).unlink(missing_ok=True)
    fsync_dir(folder)


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
