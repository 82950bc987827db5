"""What machine we train on: the CPU's model and class, which number format is fast on it, and
the torch device a run asks for.

CPU classes, best first (from /proc/cpuinfo's flags):

    amx     AMX-BF16 tiles (Intel Sapphire Rapids and later): bf16 matmuls several times fp32's
    avx512  AVX-512 (Intel Skylake-SP and later, AMD Zen 4): fp32 at 16 lanes; maybe AVX512-BF16
    avx2    AVX2 + FMA (most laptops, AMD Zen 2/3 servers, many cloud VMs): fp32 at 8 lanes, and
            bf16 only by emulation (measured 11x slower than fp32 on a Zen 3 EPYC)
    other   anything else (ARM, old x86): fp32

The kernels can be capped to a lesser class on a better machine, to measure what users of that
class get: ONEDNN_MAX_CPU_ISA (oneDNN: convolutions), ATEN_CPU_CAPABILITY (ATen's vectorised
ops) and MKL_ENABLE_INSTRUCTIONS (MKL: matmuls). `cpu_class()` reports the capped class, so a
capped run records itself as what it imitates.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.errors import ConfigError

if TYPE_CHECKING:
    import torch

CLASSES = ("amx", "avx512", "avx2", "other")  # best first
CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine() or "unknown")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def hardware_class(flags: set[str]) -> str:
    """The class the CPU itself has (no caps applied)."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "other"


def capped_to(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """The class the kernel caps in `env` hold the process to, if any (the lowest named)."""
    env = os.environ if env is None else env
    named = set()
    for value in (env.get(var, "") for var in CAP_VARS):
        v = value.strip().lower()
        if v.startswith("avx2"):
            named.add("avx2")
        elif v.startswith("avx512") and "amx" not in v:
            named.add("avx512")
        elif v in ("default", "sse42", "avx") or v.startswith("sse"):
            named.add("other")
    for cls in reversed(CLASSES):
        if cls in named:
            return cls
    return None


def cpu_class(flags: set[str] | None = None, env: dict[str, str] | None = None) -> str:
    """This process's CPU class: the hardware's, lowered by any kernel cap in the environment."""
    own = hardware_class(cpu_flags() if flags is None else flags)
    cap = capped_to(env)
    if cap is None:
        return own
    return max(own, cap, key=CLASSES.index)  # the lesser of the two


def fast_bf16(flags: set[str] | None = None, env: dict[str, str] | None = None) -> bool:
    """Whether bf16 autocast should beat fp32 here: a CPU with bf16 matmul instructions (AMX or
    AVX512-BF16) that no kernel cap holds below AVX-512. AVX2 only emulates bf16 (measured 11x
    slower than fp32 on a Zen 3 EPYC); anything unknown stays fp32."""
    flags = cpu_flags() if flags is None else flags
    has_bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    return has_bf16 and cpu_class(flags, env) in ("amx", "avx512")


def describe() -> str:
    """`AMD EPYC (avx2)`: how every figure names its machine."""
    return f"{cpu_model()} ({cpu_class()})"


# torch is imported inside the functions below: the CPU facts above serve commands that load no model.


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA, then MPS, then CPU) or the device named, if this machine has it."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available: use --device cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available: use --device cpu.")
    return torch.device(name)


def use_bf16(setting: str, device: torch.device) -> bool:
    """The recipe's `bf16` (auto / on / off) decided for `device`."""
    import torch

    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and fast_bf16()


def device_name(device: torch.device) -> str:
    """`NVIDIA H100 80GB HBM3` or `AMD EPYC (avx2)`: what a run's speed is comparable with."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return describe() if device.type == "cpu" else device.type
