"""TensorRT's text calibration cache, written from a QuantSpec, for implicit INT8 on older JetPacks.

Format (what TensorRT's IInt8Calibrator::readCalibrationCache accepts): a header line
`TRT-<NV_TENSORRT_VERSION>-<calibrator>`, then one `tensor: <hex>` line per tensor, the hex being the big-endian
IEEE-754 float32 of the scale, where TensorRT's dynamic range is scale x 127. TensorRT is symmetric, so
an asymmetric range [lo, hi] is written as +-max(|lo|, |hi|). TensorRT skips a cache whose header is not its own
(its version, the calibrator reading it), so the header names the TensorRT of the devices and the calibrator of
the agent's tensorrt engine, IInt8EntropyCalibrator2, whatever edgekit observer found the ranges.

A TensorRT concern, so it lives with the targets: `edgekit quantize` writes it beside quant_spec.json for implicit
INT8 from a float model. jetson-trt artifacts do not carry it: their ONNX is explicit Q/DQ, and TensorRT takes
every scale from the Q/DQ nodes and ignores a calibrator.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.calibration.qdq import quantized_tensors
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    import onnx

CACHE_FILE_NAME = "trt_calibration.cache"  # the name the jetson-trt target and `edgekit quantize` write
HEADER_PREFIX = "TRT-"
# the calibrator of runtime/engines/tensorrt/builder.py (trt.IInt8EntropyCalibrator2), as TensorRT names it
CALIBRATOR = "EntropyCalibration2"
# the TensorRT each JetPack ships, by the major.minor that `-O trt_version` takes
JETPACK_TRT = {"8.5": "8.5.2", "8.6": "8.6.2", "10.3": "10.3.0"}
DEFAULT_TRT_VERSION = JETPACK_TRT["8.5"]  # JetPack 5.1, the oldest the jetson-trt target builds for


def nv_tensorrt_version(trt_version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for "8.5.2" or "10.3.0.30": major*1000 + minor*100 + patch before 10
    (NvInferRuntimeCommon.h, release/8.5), major*10000 + minor*100 + patch from 10 (NvInferRuntimeBase.h)."""
    try:
        parts = [int(p) for p in trt_version.strip().split(".")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts.append(int(JETPACK_TRT.get(trt_version.strip(), "0.0.0").split(".")[2]))
    if len(parts) < 3:
        raise EdgekitError(
            f"TensorRT version {trt_version!r}: give major.minor.patch (8.5.2 on JetPack 5.1, 8.6.2 on JetPack 6.0, "
            "10.3.0 on JetPack 6.1+)"
        )
    major, minor, patch = parts[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def trt_cache_header(trt_version: str = DEFAULT_TRT_VERSION) -> str:
    """The header TensorRT `trt_version` writes, and reads back, for the engine's entropy-2 calibrator."""
    return f"{HEADER_PREFIX}{nv_tensorrt_version(trt_version)}-{CALIBRATOR}"


def _hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def cache_scales(spec: QuantSpec, model: onnx.ModelProto | None = None) -> dict[str, float]:
    """Per activation tensor, the symmetric int8 scale TensorRT uses (dynamic range / 127). With the prepared
    float `model`, only the tensors the QDQ model quantizes: TensorRT runs a layer whose tensors have no scale
    in higher precision, which is how the QuantSpec's float nodes (a detection head's concat) stay float."""
    quantized = quantized_tensors(model, spec) if model is not None else None
    scales = {}
    for name, entry in sorted(spec.tensors.items()):
        if entry.kind != "activation" or (quantized is not None and name not in quantized):
            continue
        if entry.range is not None:
            bound = max(abs(entry.range[0]), abs(entry.range[1]))
        elif entry.dtype == "int8" and entry.zero_point == 0:
            bound = float(entry.scale) * 127.0
        else:
            continue
        scales[name] = max(bound, 1e-12) / 127.0
    return scales


def write_trt_cache(
    spec: QuantSpec,
    path: str | Path,
    *,
    model: onnx.ModelProto | None = None,
    trt_version: str = DEFAULT_TRT_VERSION,
) -> Path:
    """The cache for TensorRT `trt_version` (its header; the agent re-heads it for another TensorRT)."""
    path = Path(path)
    lines = [trt_cache_header(trt_version)]
    lines += [f"{name}: {_hex(scale)}" for name, scale in cache_scales(spec, model).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_trt_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) of a TensorRT calibration cache."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines or not lines[0].startswith(HEADER_PREFIX):
        raise EdgekitError(f"{path} is not a TensorRT calibration cache (no {HEADER_PREFIX}... header)")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        try:
            scales[name.strip()] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        except ValueError as exc:
            raise EdgekitError(f"{path}:{number}: {line!r} is not 'tensor: <8 hex digits>'") from exc
        if not sep:
            raise EdgekitError(f"{path}:{number}: {line!r} is not 'tensor: <8 hex digits>'")
    return lines[0], scales
