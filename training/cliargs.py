"""Argument types of the training CLI (``python -m training``): every numeric flag has a range, and a path to
write is refused when it is the wrong kind of thing, so a bad value is argparse's one-line usage error (exit 2)
before any work. No torch, no train extra: the parser is built before the extra's imports are checked."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def int_in(lo: int, hi: int | None) -> Callable[[str], int]:
    """An integer from lo to hi (None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be from {lo}" + (f" to {hi}" if hi is not None else " up")
                                             + f", got {v}")
        return v
    return parse


def float_in(lo: float, hi: float, above: bool = False) -> Callable[[str], float]:
    """A number from lo (above lo, with ``above``) to hi; never NaN or infinite (hi is finite)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not ((lo < v if above else lo <= v) and v <= hi):  # False for NaN
            raise argparse.ArgumentTypeError((f"must be above {lo:g} and at most {hi:g}" if above else
                                              f"must be from {lo:g} to {hi:g}") + f", got {text}")
        return v
    return parse


# torch's generators take seeds below 2^64; the service's (app.schemas) are below 2^63 - 1
seed = int_in(0, 2**63 - 2)


def _under_a_file(path: Path) -> Path | None:
    """The nearest existing folder above ``path`` when it is a file (no folder can be made under it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def out_file(text: str) -> str:
    """A file to write: not an existing folder, nor under a file (checked before the work that precedes the
    write, not after it)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected a file to write")
    if (blocker := _under_a_file(path)) is not None:
        raise argparse.ArgumentTypeError(f"{text}: {blocker} is a file, not a folder")
    return text


def out_dir(text: str) -> str:
    """A folder to write into: not an existing file, nor under one."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a folder")
    if (blocker := _under_a_file(path)) is not None:
        raise argparse.ArgumentTypeError(f"{text}: {blocker} is a file, not a folder")
    return text
