"""Live RAM, swap, CPU and GPU samples, taken by a background task so handlers never block."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import psutil

__all__ = ["Sample", "Sampler", "take_sample"]


@dataclass(frozen=True)
class Sample:
    at: float
    ram_total: int
    ram_available: int
    ram_used_fraction: float
    swap_used: int
    cpu_percent: float
    #: Summed over NVIDIA GPUs when NVML answers; None without one.
    gpu_memory_used: int | None = None
    gpu_utilization: float | None = None


class _Nvml:
    """NVML handles, opened once; ``None`` readings when there is no driver or no GPU."""

    def __init__(self) -> None:
        self.handles: list[object] | None = None

    def read(self) -> tuple[int | None, float | None]:
        if self.handles is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                count = pynvml.nvmlDeviceGetCount()
                self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception:  # no driver, no library: a CPU-only machine
                self.handles = []
        if not self.handles:
            return None, None
        import pynvml

        try:
            used = sum(int(pynvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles)
            util = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
        except Exception:
            return None, None
        return used, sum(util) / len(util)


_nvml = _Nvml()


def take_sample() -> Sample:
    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    gpu_used, gpu_util = _nvml.read()
    return Sample(
        at=time.time(),
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        ram_used_fraction=1.0 - vm.available / vm.total if vm.total else 0.0,
        swap_used=int(swap.used),
        cpu_percent=psutil.cpu_percent(interval=None),
        gpu_memory_used=gpu_used,
        gpu_utilization=gpu_util,
    )


class Sampler:
    """Keeps the latest sample and a short history; ``start()`` inside a running event loop."""

    def __init__(self, interval: float = 0.25, history: int = 240) -> None:
        self.interval = interval
        self.history: deque[Sample] = deque(maxlen=history)
        self._task: asyncio.Task[None] | None = None
        self._latest: Sample | None = None

    @property
    def latest(self) -> Sample:
        if self._latest is None:
            self._latest = take_sample()
            self.history.append(self._latest)
        return self._latest

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def since(self, at: float) -> list[Sample]:
        return [s for s in self.history if s.at >= at]

    async def _run(self) -> None:
        while True:
            self._latest = take_sample()
            self.history.append(self._latest)
            await asyncio.sleep(self.interval)
