"""In memory or streamed: what ``data.stream`` decides for a study, and the one line that says why.

In memory is the fast path (decode once, every trial shares the uint8 tensors) and stays the choice
for every set that fits. What the in-memory path costs on a node is the decoded set on the driver
while it loads, its copy in the object store, and whatever each trial holds on its device, so
``auto`` streams once the decoded set alone would exceed ``data.stream_threshold`` of the node's
memory (a quarter by default). Only ``parquet:`` and ``imagefolder:`` sets can stream; others are
always in memory under ``auto`` and refused under ``true``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lorsp.data.load import plan_stream_for, streamable
from lorsp.data.manifest import StreamPlan
from lorsp.errors import DataError

if TYPE_CHECKING:
    from lorsp.config import DataConfig

__all__ = ["DataMode", "choose_mode", "node_memory_bytes"]


@dataclass(frozen=True)
class DataMode:
    """The decision: ``plan`` is set when the set streams; ``line`` says what was chosen and why.

    ``line`` is empty where there was nothing to decide (``false``, or a set that cannot stream).
    """

    plan: StreamPlan | None
    line: str

    @property
    def stream(self) -> bool:
        return self.plan is not None


def node_memory_bytes() -> int:
    """Physical memory of this machine (the node the driver runs on)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def choose_mode(data: DataConfig, memory: int | None = None) -> DataMode:
    """Stream or not, per ``data.stream``; under ``auto`` compare the decoded size with the threshold.

    Under ``auto`` and ``true`` this lists the data set's rows (labels only), which is cheap; the
    in-memory path then loads the set as before.
    """
    if data.stream is False:
        return DataMode(None, "")
    if not streamable(data.dataset):
        if data.stream is True:
            raise DataError(
                f"data.stream: true needs a parquet:PATH or imagefolder:PATH data set, not '{data.dataset}'; "
                "set data.stream: auto or false to decode it into memory"
            )
        return DataMode(None, "")
    plan = plan_stream_for(data)
    need = plan.decoded_bytes()
    if data.stream is True:
        why = f"data.stream: true; decoded it would take {_size(need)}"
        return DataMode(plan, f"data: streaming through Ray Data ({why})")
    memory = node_memory_bytes() if memory is None else memory
    limit = data.stream_threshold * memory
    verdict = "over" if need > limit else "within"
    why = (f"decoded it would take {_size(need)}, {verdict} data.stream_threshold {data.stream_threshold:g} "
           f"of this node's {_size(memory)} (data.stream: auto)")
    if need > limit:
        return DataMode(plan, f"data: streaming through Ray Data: {why}")
    return DataMode(None, f"data: in memory: {why}")
