"""A strict stand-in for the `tensorrt` Python module of one release (8.5 or 10.x), covering what the engine's
builder calls: only the attributes that release has (`__slots__`, so setting one it lacks fails as it would on
the device), an ONNX "parser" that counts Q/DQ nodes, and a build that treats a calibrator the way TensorRT does:
ignored for a network with Q/DQ layers; else its cache read, and skipped when the header is not
`TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2`, after which calibration asks for batches.

Facts: TensorRT 10 removed IBuilderConfig.max_workspace_size (set_memory_pool_limit since 8.4); explicit batch is
the only mode in 10 (the EXPLICIT_BATCH flag deprecated); NV_TENSORRT_VERSION is major*1000+minor*100+patch in 8.x
and major*10000+minor*100+patch from 10 (include/NvInferRuntimeCommon.h, NvInferRuntimeBase.h).
"""

from __future__ import annotations

import enum
import types
from typing import Any

import onnx


def make_tensorrt(version: str) -> types.ModuleType:
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.log = []  # what the fake TensorRT logged, and what it did with the calibrator
    interfaces = _interfaces()
    network = _network()
    builder = _builder(trt, interfaces["BuilderFlag"], network, (major, minor, patch))
    for part in (interfaces, network, builder):
        for name, value in part.items():
            if name[0].isupper() and name not in ("Severity", "Layer", "Tensor", "Network", "Profile"):
                setattr(trt, name, value)
    return trt


def _interfaces() -> dict[str, Any]:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING = Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING
        INFO, VERBOSE = Severity.INFO, Severity.VERBOSE

        def __init__(self) -> None:
            pass

    class IInt8Calibrator:
        algorithm = ""

        def __init__(self) -> None:
            pass

    class IInt8EntropyCalibrator2(IInt8Calibrator):
        algorithm = "EntropyCalibration2"

    class IInt8MinMaxCalibrator(IInt8Calibrator):
        algorithm = "MinMaxCalibration"

    BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 SPARSE_WEIGHTS GPU_FALLBACK")
    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    DeviceType = enum.Enum("DeviceType", "GPU DLA")

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0

    return dict(locals())


def _network() -> dict[str, Any]:
    LayerType = enum.Enum("LayerType", "CONVOLUTION QUANTIZE DEQUANTIZE OTHER")

    class Layer:
        __slots__ = ("type",)

        def __init__(self, kind: Any) -> None:
            self.type = kind

    class Tensor:
        __slots__ = ("name", "shape")

        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape = name, shape

    class Network:
        __slots__ = ("layers", "inputs")

        def __init__(self) -> None:
            self.layers: list[Layer] = []
            self.inputs: list[Tensor] = []

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, index: int) -> Layer:
            return self.layers[index]

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        __slots__ = ("network",)

        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network

        num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            proto = onnx.load(path)
            kinds = {"QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE}
            self.network.layers = [Layer(kinds.get(n.op_type, LayerType.OTHER)) for n in proto.graph.node]
            for value in proto.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims))
            return True

    return dict(locals())


def _builder(trt: types.ModuleType, BuilderFlag: Any, network: dict[str, Any], version: tuple) -> dict[str, Any]:
    major, minor, patch = version
    nv_version = major * (10000 if major >= 10 else 1000) + minor * 100 + patch
    LayerType, Network = network["LayerType"], network["Network"]

    class Profile:
        __slots__ = ("shapes",)

        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (list(low), list(opt), list(high))

    BuilderConfig = _config_type(major)

    class Builder:
        __slots__ = ()
        num_DLA_cores = 0

        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int = 0) -> Any:
            if major >= 10 and flags:
                trt.log.append("WARNING: kEXPLICIT_BATCH is deprecated and has no effect")
            if major < 10 and not flags:
                trt.log.append("ERROR: implicit batch networks cannot parse ONNX")
            return Network()

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Any, config: BuilderConfig) -> Any:
            calibrator = config.int8_calibrator
            qdq = any(layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in network.layers)
            if BuilderFlag.INT8 in config.flags and calibrator is not None:
                if qdq:
                    trt.log.append("WARNING: calibrator won't be used in explicit precision mode")
                elif not _read_cache(trt, nv_version, calibrator):
                    return None
            trt.log.append("built")
            return bytearray(b"PLAN")

    return dict(locals())


def _read_cache(trt: types.ModuleType, nv_version: int, calibrator: Any) -> bool:
    """TensorRT reading a calibrator's cache: skipped unless the header is its own, then calibration needs batches."""
    cache = calibrator.read_calibration_cache()
    header = bytes(cache or b"").split(b"\n", 1)[0].decode("ascii", "replace").strip()
    if header != f"TRT-{nv_version}-{calibrator.algorithm}":
        trt.log.append(f"skipped calibration cache {header!r}")
        if calibrator.get_batch(["input"]) is None:  # no batches: calibration fails
            trt.log.append("ERROR: calibration failure occurred with no scaling factors detected")
            return False
    trt.log.append(f"read calibration cache {header!r}")
    return True


def _config_type(major: int) -> type:
    """IBuilderConfig with only the attributes TensorRT `major` has."""
    config_slots = ["flags", "int8_calibrator", "default_device_type", "DLA_core", "profiles", "pools"]
    if major < 10:  # removed in TensorRT 10
        config_slots.append("max_workspace_size")

    class BuilderConfig:
        __slots__ = tuple(config_slots)

        def __init__(self) -> None:
            self.flags: set = set()
            self.int8_calibrator = None
            self.profiles: list = []
            self.pools: dict = {}

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pools[pool] = size

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    return BuilderConfig
