"""TensorRT's text calibration cache, written from a QuantSpec, for implicit INT8 on older JetPacks.

Format (what TensorRT's IInt8Calibrator::readCalibrationCache accepts): a header line
`TRT-<version>-<algorithm>`, then one `tensor: <hex>` line per tensor, the hex being the big-endian
IEEE-754 float32 of the scale, where TensorRT's dynamic range is scale x 127. TensorRT is symmetric, so
an asymmetric range [lo, hi] is written as +-max(|lo|, |hi|).

A TensorRT concern, so it lives with the targets: the jetson-trt target ships the cache in int8 artifacts,
and `edgekit quantize` writes it beside quant_spec.json.
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
DEFAULT_VERSION = "8601"  # TensorRT 8.6.1 (JetPack 6); 8.5 (JetPack 5) reads the same lines
ALGORITHMS = {
    "entropy": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "percentile": "EntropyCalibration2",
    "mse": "EntropyCalibration2",
}


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
    spec: QuantSpec, path: str | Path, *, model: onnx.ModelProto | None = None, version: str = DEFAULT_VERSION
) -> Path:
    path = Path(path)
    algorithm = ALGORITHMS.get(str(spec.calibration.get("observer")), "EntropyCalibration2")
    lines = [f"{HEADER_PREFIX}{version}-{algorithm}"]
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
