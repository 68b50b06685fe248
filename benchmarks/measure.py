"""How the runner measures: wall time, memory kept for backward, and the machine's ceilings
(the GEMM rate for arithmetic, a large copy's rate for memory traffic)."""

from __future__ import annotations

import dataclasses
import pathlib
import gc
import os
import statistics
import time
from typing import Callable, Optional

import torch

MiB = 2 ** 20


@dataclasses.dataclass
class Timing:
    times_ms: list
    first_call_ms: Optional[float] = None  # the first warm-up run: where torch.compile compiles

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def max_ms(self) -> float:
        return max(self.times_ms)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Run ``fn`` ``warmup`` times untimed (allocator, oneDNN primitive and kernel caches),
    then ``repeats`` times, timing each run on its own so min/median/max are visible.
    The first warm-up run is timed too (a compiled row's compile time), never counted."""
    first_call_ms = None
    for k in range(warmup):
        start = time.perf_counter()
        fn()
        if k == 0:
            synchronize(device)
            first_call_ms = (time.perf_counter() - start) * 1e3
    synchronize(device)
    collect_garbage()  # so one row does not pay for the garbage of the row before
    if device.type == "cuda":
        return Timing([_cuda_event_ms(fn) for _ in range(repeats)], first_call_ms)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(times, first_call_ms)


def collect_garbage() -> None:
    """Collect what earlier rows left, then freeze the survivors (torch's, dynamo's and
    inductor's own objects among them), so later collections, timed or not, scan only newer
    objects: once inductor is imported a full collection took ~0.2 s, every row."""
    gc.collect()
    gc.freeze()


def _cuda_event_ms(fn: Callable[[], None]) -> float:
    """GPU time from before the first launch to after the last, host gaps included."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def saved_for_backward_mib(fn: Callable[[], None], held_by_caller) -> float:
    """MiB of distinct tensor storages that autograd saves for backward during ``fn``,
    leaving out those of ``held_by_caller`` (the input and the weights, which exist in any
    case). A storage saved by many ops (W_hh, once per step of the cell loop) counts once.

    This is what a training step keeps alive between forward and backward, on any device;
    it is not the allocator's peak, which also holds temporaries.
    """
    excluded = {t.untyped_storage().data_ptr() for t in held_by_caller}
    saved_bytes = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            # Every saved tensor stays alive until backward, so no two share an address.
            saved_bytes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved_bytes.values()) / MiB


def drop_grads(tensors) -> None:
    """Drop the gradients a fwd+bwd run left, at its end (what zero_grad(set_to_none=True)
    does before the next step): every run then starts without them, and peak_mib's window
    never counts freeing the previous run's gradients as this run's saving (it did: the
    credit depended on whether the free fell inside the profiled window, 31 vs 39 MiB for
    the same GRU run)."""
    for t in tensors:
        t.grad = None


def peak_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak tensor memory allocated during ``fn`` above what was allocated before it (MiB).

    CUDA: the allocator's own statistics. CPU, where torch keeps none: the profiler's
    allocation and free events (``profile_memory``), summed in time order; every tensor
    allocated by torch or by fused_rnn's C++ (ATen's allocator) is seen.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MiB
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / MiB


def gemm_gflops(n: int, device: torch.device, dtype: torch.dtype, warmup: int = 2,
                repeats: int = 5) -> float:
    """The machine's matmul ceiling: median GFLOP/s of an n x n x n GEMM, the arithmetic
    limit of a GEMM-bound recurrence."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    timing = time_ms(lambda: torch.mm(a, b), device, warmup, repeats)
    return 2 * n ** 3 / (timing.median_ms * 1e-3) / 1e9


def copy_gbytes_per_s(nbytes: int, device: torch.device, warmup: int = 2,
                      repeats: int = 5) -> float:
    """The machine's memory-traffic ceiling: median GB/s of copying one ``nbytes`` buffer into
    another on the device (CUDA: device to device), counting the bytes read and written.
    Large enough (256 MiB by default) that no cache holds it."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_ms(lambda: dst.copy_(src), device, warmup, repeats)
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9


class OtherLoad:
    """CPU time that other processes took while we measured, from /proc/stat minus our own.

    On a small shared machine one busy neighbour is enough to wreck CPU timings (torch's
    OpenMP threads wait on each other, so losing one core can cost 10x, not 2x); the runner
    records this so such a run is recognisable. None where /proc/stat does not exist.
    """

    def __init__(self):
        self._start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            fields = pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy;
        # steal is time the hypervisor gave to another machine, contention all the same.
        busy_ticks = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
        own = os.times()
        return busy_ticks / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()

    def cores_used(self) -> Optional[float]:
        """Average number of cores other processes kept busy since construction."""
        end = self._snapshot()
        if self._start is None or end is None:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        return max(busy - own, 0.0) / wall if wall > 0 else None
