"""What an x86 CPU's instruction set means for INT8: whether 8-bit weights are safe, read from /proc/cpuinfo.

ONNX Runtime multiplies uint8 activations by int8 weights. With VNNI (AVX512-VNNI, AVX-VNNI) or AMX the
products are summed in 32 bits. Without it (AVX2 only, or AVX-512 without VNNI) the kernels use VPMADDUBSW,
whose int16 sum of two 255 x 127 products saturates: 8-bit weights then lose accuracy (measured on an AVX2
EPYC: PP-OCR det's first Conv fell to 6 dB SQNR), and 7-bit weights ([-63, 63]) are the safe choice.
Shared by the host (the x86-ort build's weight scheme, `inspect`) and the agent (a warning when an artifact
with 8-bit weights runs on a CPU without VNNI). Python 3.8-compatible.
"""

import platform
from typing import Any, Dict, Optional, Set

VNNI_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # u8 x s8 dot products accumulated in 32 bits
WEIGHTS_8BIT = "int8_per_channel"
WEIGHTS_7BIT = "int7_per_channel"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Set[str]:
    """The first processor's `flags` line as a set (empty where there is none: not Linux, or not x86)."""
    try:
        with open(cpuinfo, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def is_x86(machine: Optional[str] = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i686", "x86")


def vnni_flag(flags: Set[str]) -> Optional[str]:
    """The strongest u8 x s8 dot-product extension the CPU has, or None."""
    return next((flag for flag in VNNI_FLAGS if flag in flags), None)


def x86_weight_scheme(flags: Set[str]) -> str:
    """8-bit per-channel weights where the CPU sums u8 x s8 products in 32 bits, else 7-bit."""
    return WEIGHTS_8BIT if vnni_flag(flags) else WEIGHTS_7BIT


def isa_facts(cpuinfo: str = "/proc/cpuinfo", machine: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """For an x86 CPU: its INT8-relevant extensions and the weight scheme that is safe on it; None elsewhere."""
    if not is_x86(machine):
        return None
    flags = cpu_flags(cpuinfo)
    if not flags:
        return None
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
    return {
        "extensions": [flag for flag in wanted if flag in flags],
        "vnni": vnni_flag(flags),
        "x86_weights": x86_weight_scheme(flags),
    }


def saturation_warning(weights: Optional[str], isa: Optional[Dict[str, Any]]) -> Optional[str]:
    """A warning when an artifact with 8-bit weights runs on an x86 CPU without VNNI, else None."""
    if weights != WEIGHTS_8BIT or not isa or isa.get("vnni"):
        return None
    return (
        "this artifact has 8-bit weights, but this CPU has no VNNI/AMX (%s): ONNX Runtime's u8 x s8 kernels "
        "can saturate in int16 here and lose accuracy; rebuild for this device with `edgekit build -t x86-ort "
        "-O isa=avx2` (7-bit weights)" % (", ".join(isa.get("extensions") or []) or "no AVX2 either")
    )
