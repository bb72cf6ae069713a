"""Shared helpers of the hand-run benchmarks: interleaved timing, ratios, memory, tables.

Timings on a shared machine drift by 2x within a minute, so every figure that is compared with
another is measured *interleaved*: in each round every variant runs ``reps`` times, the order
rotates from round to round, and ratios are the median of the per-round ratios (both variants
of a ratio saw the same load in that round).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    rounds: int,
    reps: int,
    warmup: int = 1,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of every function, one mean per round; rounds rotate the order."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            sync(device)
            tick = time.perf_counter()
            for _ in range(reps):
                fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - tick) / reps)
        if progress:
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ratio(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """Median and quartiles of a/b over rounds (each round's pair ran under the same load)."""
    rs = sorted(x / y for x, y in zip(times[a], times[b]))
    if len(rs) < 4:
        return median(rs), rs[0], rs[-1]
    q = statistics.quantiles(rs, n=4)
    return median(rs), q[0], q[2]


def fmt_ratio(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def saved_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward while ``fn`` runs its forward.

    Storages of ``exclude`` (parameters, buffers, the input batch: alive anyway) are not counted.
    The hooks only observe; the graph and the backward pass are unchanged.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in skip:
            seen.add(ptr)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def rss_now_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (getrusage; KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(peak allocated MiB during ``fn``, peak minus what was allocated before it) on CUDA."""
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**20, (peak - before) / 2**20


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    out = "\n".join([line, sep, *body])
    return f"\n{title}\n\n{out}\n" if title else out


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f}"
    return f"{what}{load}, torch {torch.__version__}"


def dump_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"wrote {path}")
