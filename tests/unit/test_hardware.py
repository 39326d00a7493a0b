"""Hardware profile: parsers on recorded/documented samples, and detection on this machine.

Inputs under ``tests/fixtures/hardware/`` (see its README): the Linux x86_64
``/proc/cpuinfo`` is **recorded** from the development VM; the arm64 cpuinfo and the two
macOS ``sysctl`` excerpts are **documented-format samples**, because neither an ARM board
nor a Mac can run here. NVML is exercised for real (no driver here, so no GPU and no error)
and through a fake built from NVML's documented API (``nvmlInit``, ``nvmlDeviceGetCount``,
``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetName``, ``nvmlDeviceGetMemoryInfo``,
``nvmlDeviceGetMemoryInfo().total/.free`` in bytes), since no NVIDIA GPU exists here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotune.ground.units import GiB, MiB
from autotune.hardware import profile as hw
from autotune.hardware.profile import (
    GPU,
    CpuInfo,
    apple_bandwidth,
    apple_chip,
    assemble_profile,
    assumed_cpu_bandwidth,
    cpu_from_sysctl,
    detect_hardware,
    effective_budget,
    gpus_from_nvml,
    normalise_machine,
    nvidia_bandwidth,
    parse_proc_cpuinfo,
    parse_sysctl,
    safety_reserve,
    vram_reserve,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hardware"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def cpu_profile(*, cores: int = 2, ram: int = 24 * GiB, available: int | None = None, gpus=()):
    return assemble_profile(
        os_name="linux",
        os_version="test",
        machine="x86_64",
        cpu=CpuInfo("Intel(R) Xeon(R) Processor", cores, cores),
        ram_total=ram,
        ram_available=ram if available is None else available,
        swap_total=0,
        swap_used=0,
        gpus=gpus,
    )


# --------------------------------------------------------------------------- /proc/cpuinfo


def test_recorded_x86_cpuinfo_gives_model_and_two_cores() -> None:
    cpu = parse_proc_cpuinfo(fixture("linux_x86_64_cpuinfo.txt"))
    assert cpu.model == "Intel(R) Xeon(R) Processor"
    assert (cpu.physical_cores, cpu.logical_cores) == (2, 2)


def test_arm64_cpuinfo_names_board_and_core_type() -> None:
    cpu = parse_proc_cpuinfo(fixture("linux_arm64_cpuinfo.txt"))
    assert cpu.model == "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76)"
    assert (cpu.physical_cores, cpu.logical_cores) == (4, 4)


def test_hyperthreaded_cpuinfo_counts_distinct_cores() -> None:
    blocks = [
        f"processor\t: {i}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {i % 2}\n"
        for i in range(4)
    ]
    cpu = parse_proc_cpuinfo("\n".join(blocks))
    assert (cpu.physical_cores, cpu.logical_cores) == (2, 4)


def test_unknown_arm_part_is_reported_not_guessed() -> None:
    cpu = parse_proc_cpuinfo("processor\t: 0\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n")
    assert cpu.model == "ARM CPU (implementer 0x61, part 0x022)"


def test_empty_cpuinfo_is_unknown() -> None:
    assert parse_proc_cpuinfo("") == CpuInfo("unknown", None, None)


# --------------------------------------------------------------------------- macOS sysctl


def test_parse_sysctl_reads_both_separators() -> None:
    values = parse_sysctl("hw.memsize: 17179869184\nkern.maxproc = 4000\nnot a line\n")
    assert values == {"hw.memsize": "17179869184", "kern.maxproc": "4000"}


def test_m2_sysctl_sample_becomes_an_apple_profile() -> None:
    values = parse_sysctl(fixture("macos_m2_sysctl.txt"))
    assert values["vm.swapusage"].startswith("total = 2048.00M")
    cpu = cpu_from_sysctl(values)
    assert cpu == CpuInfo("Apple M2", 8, 8)
    profile = assemble_profile(
        os_name="darwin",
        os_version=values["kern.osproductversion"],
        machine="arm64",
        cpu=cpu,
        ram_total=int(values["hw.memsize"]),
        ram_available=9 * GiB,
        swap_total=2 * GiB,
        swap_used=1 * GiB,
        performance_cores=int(values["hw.perflevel0.physicalcpu"]),
    )
    assert profile.accelerator == "apple"
    assert profile.memory_bandwidth_gbs == 100.0
    assert "Apple M2 spec sheet" in profile.bandwidth_source
    (gpu,) = profile.gpus
    assert gpu.unified and gpu.memory_total == 16 * GiB and gpu.memory_free == 9 * GiB
    # unified memory is counted once: RAM available minus the reserve, nothing added for the GPU
    assert effective_budget(profile, None) == 9 * GiB - safety_reserve(16 * GiB)


def test_intel_mac_sysctl_sample_falls_back_to_a_stated_assumption() -> None:
    values = parse_sysctl(fixture("macos_intel_sysctl.txt"))
    cpu = cpu_from_sysctl(values)
    assert cpu == CpuInfo("Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz", 6, 12)
    assert "hw.optional.arm64" not in values
    profile = assemble_profile(
        os_name="darwin",
        os_version=values["kern.osproductversion"],
        machine="x86_64",
        cpu=cpu,
        ram_total=int(values["hw.memsize"]),
        ram_available=8 * GiB,
        swap_total=0,
        swap_used=0,
    )
    assert profile.accelerator == "cpu"
    assert profile.gpus == ()
    assert profile.memory_bandwidth_gbs == 42.7
    assert profile.bandwidth_source.startswith("assumed: dual-channel DDR4-2666")


# --------------------------------------------------------------------------- bandwidth tables


@pytest.mark.parametrize(
    ("brand", "chip"),
    [
        ("Apple M1", "M1"),
        ("Apple M2 Pro", "M2 Pro"),
        ("Apple M4 Max", "M4 Max"),
        ("Intel(R) Core(TM) i7", None),
    ],
)
def test_apple_chip_names(brand: str, chip: str | None) -> None:
    assert apple_chip(brand) == chip


def test_apple_bandwidth_picks_the_variant_by_performance_cores() -> None:
    assert apple_bandwidth("M3 Max", 12)[0] == 400.0
    assert apple_bandwidth("M3 Max", 10)[0] == 300.0
    low, source = apple_bandwidth("M3 Max")
    assert low == 300.0 and "400 GB/s" in source  # unknown variant: the lower figure, said so
    assert apple_bandwidth("M4 Max", 12)[0] == 546.0
    assert apple_bandwidth("M4 Pro")[0] == 273.0
    assert apple_bandwidth("M9") is None


@pytest.mark.parametrize(
    ("name", "gbs"),
    [
        ("NVIDIA GeForce RTX 4090", 1008.0),
        ("NVIDIA GeForce RTX 4080 SUPER", 736.0),
        ("NVIDIA GeForce RTX 4080", 717.0),
        ("NVIDIA GeForce RTX 4070 Ti SUPER", 672.0),
        ("NVIDIA GeForce RTX 3090", 936.0),
        ("NVIDIA GeForce RTX 3060", 360.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA A100-PCIE-40GB", 1555.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA H100 80GB HBM3", 3350.0),
    ],
)
def test_nvidia_bandwidth_by_name(name: str, gbs: float) -> None:
    found = nvidia_bandwidth(name)
    assert found is not None
    assert found[0] == gbs
    assert name in found[1] and "nvidia.com" in found[1]


def test_unknown_nvidia_gpu_has_no_invented_bandwidth() -> None:
    assert nvidia_bandwidth("NVIDIA Quadro P400") is None


def test_cpu_assumption_is_capped_by_cores_and_says_so() -> None:
    gbs, source = assumed_cpu_bandwidth("linux", "x86_64", "Intel(R) Xeon(R) Processor", 2)
    assert gbs == 20.0
    assert source.startswith("assumed:") and "2 cores" in source
    gbs, source = assumed_cpu_bandwidth(
        "linux", "x86_64", "13th Gen Intel(R) Core(TM) i7-13700K", 16
    )
    assert gbs == 89.6 and "DDR5" in source
    gbs, _ = assumed_cpu_bandwidth("windows", "x86_64", "AMD Ryzen 7 5800X 8-Core Processor", 8)
    assert gbs == 51.2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("AMD64", "x86_64"),
        ("x86_64", "x86_64"),
        ("aarch64", "arm64"),
        ("ARM64", "arm64"),
        ("", "unknown"),
    ],
)
def test_normalise_machine(raw: str, expected: str) -> None:
    assert normalise_machine(raw) == expected


# --------------------------------------------------------------------------- NVML


class FakeNVML:
    """Follows NVML's documented calls; values are an RTX 4090 (24,564 MiB) as NVML reports it."""

    def __init__(self, *, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"handle{index}"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(total=24564 * MiB, free=23000 * MiB, used=1564 * MiB)

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def test_gpus_from_fake_nvml() -> None:
    nvml = FakeNVML()
    (gpu,) = gpus_from_nvml(nvml)
    assert gpu == GPU("NVIDIA GeForce RTX 4090", "nvidia", 24564 * MiB, 23000 * MiB, False)
    assert nvml.shut_down


def test_nvml_without_driver_gives_no_gpu() -> None:
    assert gpus_from_nvml(FakeNVML(fail_init=True)) == ()


def test_real_pynvml_here_gives_no_gpu_and_no_error() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert gpus_from_nvml(pynvml) == ()
    else:  # pragma: no cover - only on a machine with an NVIDIA driver
        pynvml.nvmlShutdown()
        assert all(g.vendor == "nvidia" for g in gpus_from_nvml(pynvml))


def test_nvidia_profile_uses_the_gpu_bandwidth_and_adds_free_vram_to_the_budget() -> None:
    gpus = gpus_from_nvml(FakeNVML())
    profile = cpu_profile(cores=8, ram=32 * GiB, available=20 * GiB, gpus=gpus)
    assert profile.accelerator == "nvidia"
    assert profile.memory_bandwidth_gbs == 1008.0
    ram_part = 20 * GiB - safety_reserve(32 * GiB)
    vram_part = 23000 * MiB - vram_reserve(24564 * MiB)
    assert effective_budget(profile, None) == ram_part + vram_part


def test_unknown_nvidia_gpu_keeps_the_cpu_assumption_and_names_the_gpu() -> None:
    gpu = GPU("NVIDIA Quadro P400", "nvidia", 2 * GiB, 2 * GiB, False)
    profile = cpu_profile(cores=4, gpus=[gpu])
    assert profile.accelerator == "nvidia"
    assert profile.bandwidth_source.startswith("assumed:")
    assert "NVIDIA Quadro P400" in profile.bandwidth_source


# --------------------------------------------------------------------------- budget


def test_explicit_budget_wins_even_above_ram() -> None:
    profile = cpu_profile(ram=8 * GiB)
    assert effective_budget(profile, 64 * GiB) == 64 * GiB
    assert effective_budget(profile, 0) == 0


def test_reserve_is_one_gib_on_small_machines_and_ten_percent_on_large() -> None:
    assert safety_reserve(4 * GiB) == 1 * GiB
    assert safety_reserve(64 * GiB) == int(6.4 * GiB)
    small = cpu_profile(ram=4 * GiB, available=3 * GiB)
    assert effective_budget(small, None) == 2 * GiB


def test_budget_is_never_negative() -> None:
    starved = cpu_profile(ram=16 * GiB, available=512 * MiB)
    assert effective_budget(starved, None) == 0


# --------------------------------------------------------------------------- this machine


def test_detect_hardware_on_this_machine_is_sane() -> None:
    profile = detect_hardware()
    assert profile.physical_cores >= 1
    assert profile.logical_cores >= profile.physical_cores
    assert profile.ram_total > 0
    assert 0 < profile.ram_available <= profile.ram_total
    assert profile.swap_used <= profile.swap_total or profile.swap_total == 0
    assert profile.memory_bandwidth_gbs > 0
    assert profile.bandwidth_source
    assert profile.cpu_model != ""
    if sys.platform.startswith("linux"):
        assert profile.os == "linux"
        parsed = parse_proc_cpuinfo(Path("/proc/cpuinfo").read_text())
        assert profile.cpu_model == parsed.model


def test_detect_hardware_sees_an_nvidia_gpu_exactly_when_nvml_loads() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        profile = detect_hardware()
        if sys.platform != "darwin":
            assert profile.gpus == ()
            assert profile.accelerator == "cpu"
            assert profile.bandwidth_source.startswith("assumed:")
        return
    # pragma: no cover - only on a machine with an NVIDIA driver
    count = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    profile = detect_hardware()
    assert len([g for g in profile.gpus if g.vendor == "nvidia"]) == count
    assert profile.accelerator == ("nvidia" if count else "cpu")


def test_detect_hardware_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(hw, "_detect", broken)
    profile = detect_hardware()
    assert profile.cpu_model == "unknown"
    assert profile.physical_cores >= 1
    assert "detection failed: boom" in profile.bandwidth_source


def test_detect_hardware_survives_psutil_memory_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    def fail() -> None:
        raise OSError("no /proc/meminfo")

    monkeypatch.setattr(psutil, "virtual_memory", fail)
    monkeypatch.setattr(psutil, "swap_memory", fail)
    profile = detect_hardware()
    assert profile.ram_total == 0 and profile.swap_total == 0
    assert profile.physical_cores >= 1
