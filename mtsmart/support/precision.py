"""`train.precision: auto`: bf16 autocast where the hardware computes it natively, fp32 elsewhere.

Native bf16 means: a CUDA device that supports it (Ampere and newer), or a CPU with AVX-512 BF16
or AMX instructions, read from the hardware's own feature flags (Linux `/proc/cpuinfo`); on such
a CPU a MiniLM training step ran 2.5× faster under bf16 autocast, with dev scores within seed
noise of fp32 (docs/results.md, "bf16 or fp32"). Without the instructions bf16 is emulated and
slower than fp32, so auto keeps fp32 there.
"""
from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The native-bf16 feature flags this CPU reports (empty when unknown, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def resolve_precision(requested: str, device: torch.device, cpuinfo: Path = CPUINFO) -> tuple[str, str]:
    """(the precision to train in, why) for `train.precision`; anything but auto is kept."""
    if requested != "auto":
        return requested, "as configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        if flags:
            return "bf16", f"auto: the CPU has {' and '.join(flags)}"
        return "fp32", "auto: the CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)"
    return "fp32", f"auto: no bf16 detection for device type {device.type}"
