"""The static hardware profile of this machine: CPU, RAM, swap, GPUs and memory bandwidth.

Reading the machine is split in two. Pure parsers (``parse_proc_cpuinfo``, ``parse_sysctl``,
``gpus_from_nvml``, the bandwidth tables and ``assemble_profile``) turn text and values into
data and are tested on recorded or documented samples; ``detect_hardware`` gathers those
inputs on the running OS (Linux, macOS, Windows) and never raises.

Memory bandwidth matters because decoding one token reads every active weight once, so
tokens/s is bounded by bandwidth ÷ bytes per token. Every figure carries a
``bandwidth_source`` saying whether it is a vendor spec or an assumption.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.ground.units import GiB, MiB

__all__ = [
    "GPU",
    "CpuInfo",
    "HardwareProfile",
    "apple_bandwidth",
    "apple_chip",
    "assemble_profile",
    "assumed_cpu_bandwidth",
    "cpu_from_sysctl",
    "detect_hardware",
    "effective_budget",
    "gpus_from_nvml",
    "normalise_machine",
    "nvidia_bandwidth",
    "parse_proc_cpuinfo",
    "parse_sysctl",
    "safety_reserve",
    "vram_reserve",
]

UNKNOWN = "unknown"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GPU:
    """One GPU; ``unified`` means it shares system RAM (Apple Silicon)."""

    name: str
    vendor: str  # "nvidia" | "apple" | …
    memory_total: int
    memory_free: int | None
    unified: bool


@dataclass(frozen=True)
class HardwareProfile:
    """What this machine has, as autotune plans with it."""

    os: str  # "linux" | "darwin" | "windows"
    os_version: str
    machine: str  # "x86_64" | "arm64"
    cpu_model: str
    physical_cores: int
    logical_cores: int
    ram_total: int
    ram_available: int
    swap_total: int
    swap_used: int
    gpus: tuple[GPU, ...]
    memory_bandwidth_gbs: float
    bandwidth_source: str

    @property
    def accelerator(self) -> str:
        """``"nvidia"`` with an NVIDIA GPU, ``"apple"`` on Apple Silicon, else ``"cpu"``."""
        if any(g.vendor == "nvidia" for g in self.gpus):
            return "nvidia"
        if any(g.vendor == "apple" and g.unified for g in self.gpus):
            return "apple"
        return "cpu"


@dataclass(frozen=True)
class CpuInfo:
    """CPU facts parsed from one OS source; ``None`` where the source does not say."""

    model: str
    physical_cores: int | None
    logical_cores: int | None


# --------------------------------------------------------------------------- budget


def safety_reserve(ram_total: int) -> int:
    """RAM kept free for the OS and other programs: max(1 GiB, 10% of total RAM).

    1 GiB covers a desktop session on a small machine; 10% keeps the page cache and
    other apps breathing on a large one without wasting tens of GiB.
    """
    return max(1 * GiB, ram_total // 10)


def vram_reserve(vram_total: int) -> int:
    """VRAM left for the CUDA context and other processes: max(512 MiB, 5% of the card)."""
    return max(512 * MiB, vram_total // 20)


def effective_budget(profile: HardwareProfile, settings_budget: int | None) -> int:
    """Bytes autotune may plan to fill with a model (weights + KV cache + buffers).

    - ``AUTOTUNE_MEMORY_BUDGET`` (``settings_budget``) wins whenever it is set.
    - Otherwise: available RAM minus :func:`safety_reserve`, plus, for each discrete
      (non-unified) GPU, its free VRAM minus :func:`vram_reserve`.

    Why VRAM adds to RAM: Ollama and llama.cpp split a model layer by layer between the
    GPU and system RAM, so the sum is what can be resident without swapping, and swapping
    is what this budget guards against. A model larger than VRAM decodes at the speed of
    its RAM-resident part; the recommender's speed bound uses the GPU's bandwidth, so it
    is optimistic for such splits. Apple's unified memory is already in ``ram_available``
    and is not counted twice.
    """
    if settings_budget is not None:
        return max(0, int(settings_budget))
    budget = max(0, profile.ram_available - safety_reserve(profile.ram_total))
    for gpu in profile.gpus:
        if gpu.unified:
            continue
        free = gpu.memory_free if gpu.memory_free is not None else gpu.memory_total
        budget += max(0, free - vram_reserve(gpu.memory_total))
    return budget


# --------------------------------------------------------------------------- parsers


# Arm Ltd (implementer 0x41) CPU part numbers, from Arm's Technical Reference Manuals (MIDR_EL1).
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
}


def _kv_lines(text: str, sep: str) -> Iterable[tuple[str, str]]:
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if found:
            yield key.strip(), value.strip()


def parse_proc_cpuinfo(text: str) -> CpuInfo:
    """Linux ``/proc/cpuinfo`` → model name and core counts (x86 and arm64 layouts).

    x86 prints ``model name`` and ``physical id``/``core id`` per logical CPU; arm64 prints
    ``CPU implementer``/``CPU part`` and, on boards such as the Raspberry Pi, a ``Model``
    line. Physical cores are the distinct (physical id, core id) pairs when present,
    otherwise one per ``processor`` entry (arm64 has no SMT).
    """
    lines = _CpuinfoLines()
    for key, value in _kv_lines(text, ":"):
        lines.take(key.lower(), value)
    logical = lines.processors or None
    physical = len(lines.cores) if lines.cores else logical
    return CpuInfo(model=lines.name(), physical_cores=physical, logical_cores=logical)


@dataclass
class _CpuinfoLines:
    """What the lines of ``/proc/cpuinfo`` said so far; of each name, the first one counts."""

    processors: int = 0
    model_name: str | None = None
    board: str | None = None
    implementer: str | None = None
    part: str | None = None
    physical_id: str = "0"
    cores: set[tuple[str, str]] = field(default_factory=set)

    def take(self, key: str, value: str) -> None:
        """One ``key: value`` line (``key`` in lower case)."""
        if key == "processor" and value.isdigit():
            self.processors += 1
            self.physical_id = "0"
        elif key == "physical id":
            self.physical_id = value
        elif key == "core id":
            self.cores.add((self.physical_id, value))
        elif key == "model name" and self.model_name is None:
            self.model_name = value
        elif key == "cpu implementer" and self.implementer is None:
            self.implementer = value.lower()
        elif key == "cpu part" and self.part is None:
            self.part = value.lower()
        elif key in ("model", "hardware") and self.board is None and not value.isdigit():
            self.board = value

    def name(self) -> str:
        """The x86 model name; on arm64 the board and the core named by implementer and part."""
        if self.model_name is not None or self.part is None:
            return self.model_name or self.board or UNKNOWN
        core = _ARM_PARTS.get(self.part) if self.implementer == "0x41" else None
        core = core or f"ARM CPU (implementer {self.implementer or '?'}, part {self.part})"
        return f"{self.board} ({core})" if self.board else core


def parse_sysctl(text: str) -> dict[str, str]:
    """``sysctl -a``-style output (``key: value`` or ``key = value`` lines) → a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(?::|=)\s?(.*)$", line)
        if match:
            out[match.group(1)] = match.group(2).strip()
    return out


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def cpu_from_sysctl(values: Mapping[str, str]) -> CpuInfo:
    """macOS sysctl values → CPU model and core counts."""
    return CpuInfo(
        model=values.get("machdep.cpu.brand_string") or UNKNOWN,
        physical_cores=_int(values.get("hw.physicalcpu")),
        logical_cores=_int(values.get("hw.logicalcpu")),
    )


def gpus_from_nvml(nvml: Any) -> tuple[GPU, ...]:
    """NVIDIA GPUs through NVML, passed in as the ``pynvml`` module (or a recorded fake).

    Uses ``nvmlInit``, ``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``,
    ``nvmlDeviceGetName`` and ``nvmlDeviceGetMemoryInfo``. Any failure — no driver, no
    library, a device error — gives no GPUs rather than an error.
    """
    try:
        nvml.nvmlInit()
    except Exception:
        return ()
    gpus: list[GPU] = []
    try:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GPU(
                    name=str(name),
                    vendor="nvidia",
                    memory_total=int(memory.total),
                    memory_free=int(memory.free),
                    unified=False,
                )
            )
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return tuple(gpus)


def normalise_machine(machine: str) -> str:
    """``AMD64``/``x86_64`` → ``x86_64``; ``aarch64``/``ARM64``/``arm64`` → ``arm64``."""
    lower = machine.strip().lower()
    if lower in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if lower in ("aarch64", "arm64", "armv8l", "arm64e"):
        return "arm64"
    return lower or UNKNOWN


# --------------------------------------------------------------------------- bandwidth

_APPLE_SOURCE = "Apple's announcement and tech specs for the {chip} (apple.com)"

# Unified-memory bandwidth in GB/s as Apple publishes it per chip. Where one chip name
# ships with two memory configurations, the entry is (lower, higher, P-cores of the higher).
_APPLE_BANDWIDTH: dict[str, tuple[float, float | None, int | None]] = {
    "M1": (68.25, None, None),
    "M1 Pro": (200.0, None, None),
    "M1 Max": (400.0, None, None),
    "M1 Ultra": (800.0, None, None),
    "M2": (100.0, None, None),
    "M2 Pro": (200.0, None, None),
    "M2 Max": (400.0, None, None),
    "M2 Ultra": (800.0, None, None),
    "M3": (100.0, None, None),
    "M3 Pro": (150.0, None, None),
    "M3 Max": (300.0, 400.0, 12),  # 14-core CPU: 300 GB/s; 16-core CPU (12 P-cores): 400 GB/s
    "M3 Ultra": (819.0, None, None),
    "M4": (120.0, None, None),
    "M4 Pro": (273.0, None, None),
    "M4 Max": (410.0, 546.0, 12),  # 14-core CPU: 410 GB/s; 16-core CPU (12 P-cores): 546 GB/s
}


def apple_chip(brand: str) -> str | None:
    """``"Apple M2 Pro"`` → ``"M2 Pro"``; ``None`` for anything that is not Apple Silicon."""
    match = re.search(r"\bApple (M\d+)(?: (Pro|Max|Ultra))?\b", brand)
    if not match:
        return None
    return f"{match.group(1)} {match.group(2)}" if match.group(2) else match.group(1)


def apple_bandwidth(chip: str, performance_cores: int | None = None) -> tuple[float, str] | None:
    """Published unified-memory bandwidth for an Apple chip, with its source."""
    entry = _APPLE_BANDWIDTH.get(chip)
    if entry is None:
        return None
    low, high, high_p_cores = entry
    source = _APPLE_SOURCE.format(chip=chip)
    if high is None:
        return low, f"Apple {chip} spec sheet ({low:g} GB/s); {source}"
    if performance_cores is not None and high_p_cores is not None:
        gbs = high if performance_cores >= high_p_cores else low
        variant = f"{performance_cores} P-core variant"
        return gbs, f"Apple {chip} spec sheet, {variant} ({gbs:g} GB/s); {source}"
    other = f"the higher-binned variant has {high:g} GB/s"
    return low, f"Apple {chip} spec sheet ({low:g} GB/s; {other}); {source}"


_NVIDIA_SOURCE = "NVIDIA product specifications (nvidia.com)"

# (pattern on the NVML name, GB/s). Ordered so that the more specific name wins.
_NVIDIA_BANDWIDTH: tuple[tuple[str, float], ...] = (
    (r"RTX 5090", 1792.0),
    (r"RTX 5080", 960.0),
    (r"RTX 4090", 1008.0),
    (r"RTX 4080 SUPER", 736.0),
    (r"RTX 4080", 717.0),
    (r"RTX 4070 Ti SUPER", 672.0),
    (r"RTX 4070", 504.0),  # 4070, 4070 SUPER and 4070 Ti all have 504 GB/s
    (r"RTX 4060 Ti", 288.0),
    (r"RTX 4060", 272.0),
    (r"RTX 3090 Ti", 1008.0),
    (r"RTX 3090", 936.0),
    (r"RTX 3080", 760.0),  # 10 GB model; the 12 GB and Ti variants are faster
    (r"RTX 3070", 448.0),
    (r"RTX 3060", 360.0),  # 12 GB model
    (r"H100.*(PCIe)", 2000.0),
    (r"H100", 3350.0),  # SXM5
    (r"A100.*80\s?GB", 2039.0),  # SXM4 80 GB
    (r"A100", 1555.0),  # 40 GB
    (r"\bA10\b", 600.0),
    (r"\bL4\b", 300.0),
    (r"\bT4\b", 320.0),
    (r"V100", 900.0),
)


def nvidia_bandwidth(name: str) -> tuple[float, str] | None:
    """Spec-sheet memory bandwidth for an NVIDIA GPU name as NVML reports it."""
    for pattern, gbs in _NVIDIA_BANDWIDTH:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return gbs, f"{name} spec sheet ({gbs:g} GB/s); {_NVIDIA_SOURCE}"
    return None


# Desktop/laptop CPUs that use DDR5 (or LPDDR5) memory: Intel Core 12th–14th gen and Core
# Ultra, AMD Ryzen 7000 and later. A heuristic on the model name, stated as an assumption.
_DDR5_CPUS = re.compile(
    r"Core\(TM\) Ultra|Core Ultra|i[3579]-1[234]\d{3}"
    r"|Ryzen (?:\d+|AI)\s+(?:PRO\s+)?[789]\d{3}|Ryzen AI",
    flags=re.IGNORECASE,
)

#: Sustained read bandwidth one core can pull from DRAM, as an assumption (a core has a
#: limited number of outstanding cache misses; ~10 GB/s is typical of current x86 and arm64
#: cores in STREAM-like tests). With few cores this, not the memory channels, is the limit.
PER_CORE_GBS = 10.0


def assumed_cpu_bandwidth(
    os_name: str, machine: str, cpu_model: str, physical_cores: int
) -> tuple[float, str]:
    """A stated guess of usable RAM bandwidth when no spec sheet is known.

    Peak by platform — dual-channel DDR5-5600 (89.6 GB/s) for CPUs of the DDR5 generation,
    dual-channel DDR4-2666 (42.7 GB/s) for Intel Macs, dual-channel DDR4-3200 (51.2 GB/s)
    otherwise — then capped at :data:`PER_CORE_GBS` per physical core, because a machine
    with two cores cannot keep two channels busy.
    """
    if os_name == "darwin" and machine == "x86_64":
        peak, memory = 42.7, "dual-channel DDR4-2666, 42.7 GB/s"
    elif _DDR5_CPUS.search(cpu_model or ""):
        peak, memory = 89.6, "dual-channel DDR5-5600, 89.6 GB/s"
    else:
        peak, memory = 51.2, "dual-channel DDR4-3200, 51.2 GB/s"
    cores = max(1, physical_cores)
    cap = PER_CORE_GBS * cores
    if cap < peak:
        return cap, (
            f"assumed: {memory} peak, capped at {PER_CORE_GBS:g} GB/s per core × {cores} "
            f"core{'s' if cores != 1 else ''} = {cap:g} GB/s (no spec known for this CPU)"
        )
    return peak, f"assumed: {memory} (no spec known for this CPU)"


# --------------------------------------------------------------------------- assembly


def assemble_profile(
    *,
    os_name: str,
    os_version: str,
    machine: str,
    cpu: CpuInfo,
    ram_total: int,
    ram_available: int,
    swap_total: int,
    swap_used: int,
    gpus: Iterable[GPU] = (),
    performance_cores: int | None = None,
) -> HardwareProfile:
    """Build a :class:`HardwareProfile` from parsed facts, choosing the bandwidth figure.

    Apple Silicon gets a unified-memory GPU entry and Apple's published bandwidth; with an
    NVIDIA GPU of known spec, the fastest card's bandwidth is used (the weights are meant to
    live there); otherwise the CPU assumption of :func:`assumed_cpu_bandwidth`.
    """
    logical = cpu.logical_cores or cpu.physical_cores or 1
    physical = cpu.physical_cores or logical
    gpu_list = list(gpus)
    chip = apple_chip(cpu.model) if os_name == "darwin" else None
    if chip and not any(g.vendor == "apple" for g in gpu_list):
        gpu_list.append(
            GPU(
                name=f"Apple {chip}",
                vendor="apple",
                memory_total=ram_total,
                memory_free=ram_available,
                unified=True,
            )
        )
    bandwidth = apple_bandwidth(chip, performance_cores) if chip else None
    if bandwidth is None:
        bandwidth = _nvidia_bandwidth(gpu_list) or _cpu_bandwidth(
            os_name, machine, cpu.model, physical, gpu_list
        )

    return HardwareProfile(
        os=os_name,
        os_version=os_version or UNKNOWN,
        machine=machine,
        cpu_model=cpu.model or UNKNOWN,
        physical_cores=max(1, physical),
        logical_cores=max(1, logical),
        ram_total=max(0, ram_total),
        ram_available=max(0, min(ram_available, ram_total) if ram_total else ram_available),
        swap_total=max(0, swap_total),
        swap_used=max(0, swap_used),
        gpus=tuple(gpu_list),
        memory_bandwidth_gbs=float(bandwidth[0]),
        bandwidth_source=bandwidth[1],
    )


def _nvidia_bandwidth(gpus: list[GPU]) -> tuple[float, str] | None:
    """The fastest NVIDIA card of known spec (the weights are meant to live there)."""
    known = [b for b in (nvidia_bandwidth(g.name) for g in gpus if g.vendor == "nvidia") if b]
    return max(known, key=lambda item: item[0]) if known else None


def _cpu_bandwidth(
    os_name: str, machine: str, cpu_model: str, physical: int, gpus: list[GPU]
) -> tuple[float, str]:
    """The CPU assumption, saying so when an NVIDIA card was there but of no known spec."""
    gbs, source = assumed_cpu_bandwidth(os_name, machine, cpu_model, physical)
    unknown_gpu = next((g.name for g in gpus if g.vendor == "nvidia"), None)
    if unknown_gpu:
        source = f"{source}; no bandwidth spec known for {unknown_gpu}"
    return gbs, source


# --------------------------------------------------------------------------- detection


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_SYSCTL_KEYS = (
    "machdep.cpu.brand_string",
    "hw.memsize",
    "hw.physicalcpu",
    "hw.logicalcpu",
    "hw.perflevel0.physicalcpu",
    "hw.optional.arm64",
    "kern.osproductversion",
)


def _sysctl(keys: Iterable[str]) -> dict[str, str]:
    """One ``sysctl`` call for all keys; an unknown key is skipped by sysctl, not fatal here."""
    try:
        done = subprocess.run(
            ["/usr/sbin/sysctl", *keys], capture_output=True, text=True, timeout=1.0, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_sysctl(done.stdout)


def _windows_cpu_model() -> str:
    if sys.platform == "win32":  # winreg exists only there (not under Cygwin either)
        try:
            import winreg

            path = r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path) as key:
                value, _ = winreg.QueryValueEx(key, "ProcessorNameString")
                if str(value).strip():
                    return str(value).strip()
        except Exception:
            pass
    return platform.processor() or UNKNOWN


def _nvidia_gpus() -> tuple[GPU, ...]:
    try:
        import pynvml
    except Exception:
        return ()
    return gpus_from_nvml(pynvml)


def _os_version(os_name: str, sysctl_values: Mapping[str, str]) -> str:
    if os_name == "darwin":
        return sysctl_values.get("kern.osproductversion") or platform.mac_ver()[0] or UNKNOWN
    if os_name == "linux":
        with contextlib.suppress(Exception):
            name = platform.freedesktop_os_release().get("PRETTY_NAME")
            if name:
                return f"{name} (kernel {platform.release()})"
        return platform.release() or UNKNOWN
    return platform.version() or platform.release() or UNKNOWN


def detect_hardware() -> HardwareProfile:
    """Profile this machine (Linux, macOS or Windows) in well under 200 ms; never raises.

    Parts that cannot be read are reported as ``"unknown"`` or zero, and the bandwidth
    then falls back to a stated assumption.
    """
    try:
        return _detect()
    except Exception as exc:  # the last line of defence: a profile, never a traceback
        return HardwareProfile(
            os=sys.platform,
            os_version=UNKNOWN,
            machine=normalise_machine(platform.machine() or ""),
            cpu_model=UNKNOWN,
            physical_cores=max(1, os.cpu_count() or 1),
            logical_cores=max(1, os.cpu_count() or 1),
            ram_total=0,
            ram_available=0,
            swap_total=0,
            swap_used=0,
            gpus=(),
            memory_bandwidth_gbs=PER_CORE_GBS,
            bandwidth_source=f"assumed: {PER_CORE_GBS:g} GB/s (hardware detection failed: {exc})",
        )


def _detect() -> HardwareProfile:
    import psutil

    os_name = {"win32": "windows", "cygwin": "windows"}.get(sys.platform, sys.platform)
    if os_name.startswith("linux"):
        os_name = "linux"
    machine = normalise_machine(platform.machine() or "")

    sysctl_values: dict[str, str] = {}
    performance_cores: int | None = None
    if os_name == "darwin":
        sysctl_values = _sysctl(_SYSCTL_KEYS)
        performance_cores = _int(sysctl_values.get("hw.perflevel0.physicalcpu"))
        if sysctl_values.get("hw.optional.arm64") == "1":
            machine = "arm64"  # also under Rosetta, where platform.machine() says x86_64
    cpu = _os_cpu(os_name, sysctl_values)
    physical = psutil.cpu_count(logical=False) or cpu.physical_cores
    logical = psutil.cpu_count(logical=True) or cpu.logical_cores or os.cpu_count()
    cpu = CpuInfo(cpu.model, physical, logical)
    ram_total, ram_available, swap_total, swap_used = _memory(sysctl_values)

    gpus = _nvidia_gpus() if os_name in ("linux", "windows") else ()
    return assemble_profile(
        os_name=os_name,
        os_version=_os_version(os_name, sysctl_values),
        machine=machine,
        cpu=cpu,
        ram_total=ram_total,
        ram_available=ram_available,
        swap_total=swap_total,
        swap_used=swap_used,
        gpus=gpus,
        performance_cores=performance_cores,
    )


def _os_cpu(os_name: str, sysctl_values: Mapping[str, str]) -> CpuInfo:
    """The CPU as the OS's own source describes it (core counts may be missing)."""
    if os_name == "linux":
        cpu = parse_proc_cpuinfo(_read_text("/proc/cpuinfo"))
        if cpu.model == UNKNOWN:
            cpu = CpuInfo(platform.processor() or UNKNOWN, cpu.physical_cores, cpu.logical_cores)
        return cpu
    if os_name == "darwin":
        return cpu_from_sysctl(sysctl_values)
    if os_name == "windows":
        return CpuInfo(_windows_cpu_model(), None, None)
    return CpuInfo(platform.processor() or UNKNOWN, None, None)


def _memory(sysctl_values: Mapping[str, str]) -> tuple[int, int, int, int]:
    """RAM total and available, swap total and used, in bytes (0 where unreadable)."""
    import psutil

    ram_total = ram_available = swap_total = swap_used = 0
    with contextlib.suppress(Exception):
        vm = psutil.virtual_memory()
        ram_total, ram_available = int(vm.total), int(vm.available)
    if not ram_total and sysctl_values.get("hw.memsize"):
        ram_total = _int(sysctl_values["hw.memsize"]) or 0
    with contextlib.suppress(Exception):
        swap = psutil.swap_memory()
        swap_total, swap_used = int(swap.total), int(swap.used)
    return ram_total, ram_available, swap_total, swap_used
