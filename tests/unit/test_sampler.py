"""Live samples: this machine's real RAM and CPU; GPU figures through a stand-in NVML module,
since no NVIDIA driver can run here (built from NVML's documented calls and fields)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from autotune.hardware import sampler


def test_a_sample_of_this_machine_has_no_gpu_figures() -> None:
    s = sampler._Nvml()
    sample = sampler.take_sample()
    assert sample.ram_total > 0 and 0 <= sample.ram_used_fraction <= 1
    assert s.read() == (None, None)  # no driver here


def test_gpu_memory_and_utilisation_are_summed_over_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = types.ModuleType("pynvml")
    devices = [SimpleNamespace(used=2 * 1024**3, gpu=30), SimpleNamespace(used=1024**3, gpu=70)]
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: devices[i]  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=h.used, total=8 * 1024**3)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=h.gpu, memory=0)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    used, util = sampler._Nvml().read()
    assert used == 3 * 1024**3 and util == 50
