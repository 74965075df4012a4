"""Probes of what a piece of torch code does, independent of the machine's load: ``HostReads`` counts where
tensor values come back to Python (each a device sync on a GPU). Used by benchmarks/decode_step.py and by the
decoding tests that pin the loop's reads."""
from __future__ import annotations

from collections import Counter
from typing import Any

from torch.overrides import TorchFunctionMode

READS = {"tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """Counts the tensor methods that hand values to Python (and ``.cpu()`` apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in READS or name == "cpu":
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def reads(self) -> int:
        return sum(v for k, v in self.calls.items() if k in READS)
