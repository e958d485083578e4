"""Building a serialized plan from ONNX on the device: TensorRT's Python builder (TensorRT 8.5 to 10.x: the
explicit-batch flag and workspace limit differ between them) or the trtexec binary.

Needs TensorRT (passed in as the imported module). Python 3.8-compatible.
"""

from typing import Any, Dict, List, Optional, Tuple

from ..base import EngineError
from .trtexec import TRTEXEC_PATHS, build_with_trtexec, find_trtexec


def make_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        """Keeps TensorRT's warnings and errors so a failed build can say why."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR, trt.ILogger.WARNING):
                self.lines = (self.lines + ["%s: %s" % (severity, msg)])[-30:]

    return _Logger()


CALIBRATOR = "EntropyCalibration2"  # how TensorRT names IInt8EntropyCalibrator2 in a cache header


def nv_tensorrt_version(version: str) -> int:
    """NV_TENSORRT_VERSION of "8.5.2.2" or "10.3.0.30": major*1000 + minor*100 + patch before TensorRT 10,
    major*10000 + minor*100 + patch from 10 (the number a calibration cache header carries)."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    return parts[0] * (10000 if parts[0] >= 10 else 1000) + parts[1] * 100 + parts[2]


def cache_for_this_tensorrt(cache: bytes, version: str) -> Tuple[bytes, List[str]]:
    """(the cache with the header this TensorRT and calibrator read, warnings). TensorRT skips a cache whose header
    names another version or calibrator, then asks for calibration batches the agent does not have. edgekit's
    scales do not depend on the TensorRT that reads them, so a foreign header is replaced, and the facts say so."""
    header, newline, rest = cache.partition(b"\n")
    wanted = ("TRT-%d-%s" % (nv_tensorrt_version(version), CALIBRATOR)).encode("ascii")
    if not header.startswith(b"TRT-"):
        raise EngineError("the calibration_cache does not start with a TRT-<version>-<calibrator> header")
    if header.strip() == wanted:
        return cache, []
    note = "calibration cache header %s is not this TensorRT's (%s): read as %s" % (
        header.strip().decode("ascii", "replace"),
        version,
        wanted.decode("ascii"),
    )
    return wanted + newline + rest, [note]


def _make_cache_calibrator(trt: Any, cache: bytes) -> Any:
    class _CacheCalibrator(trt.IInt8EntropyCalibrator2):
        """Implicit INT8 from a calibration cache alone: TensorRT reads every scale from the cache, so it
        never asks for a batch (edgekit's calibration wrote the cache on the host)."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any) -> Any:
            return None  # no data: a cache that misses a tensor ends calibration with TensorRT's error

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            pass

    return _CacheCalibrator()


def _network_has_qdq(trt: Any, network: Any) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def build_with_python(
    trt: Any, logger: Any, onnx_path: str, opts: Dict[str, Any], warnings: Optional[List[str]] = None
) -> bytes:
    """Parse the ONNX and build a serialized plan with TensorRT's Python builder (its documented sample flow);
    what the build did not do as asked is appended to `warnings`."""
    warnings = [] if warnings is None else warnings
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major < 10:  # TensorRT 10 networks are always explicit batch; the flag is deprecated there
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(
            "TensorRT cannot parse %s: %s; check `edgekit inspect` for ops TensorRT does not support"
            % (onnx_path, "; ".join(errors) or "no reason given")
        )
    config = builder.create_builder_config()
    if opts["workspace_mb"]:
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts["workspace_mb"] << 20)
        else:  # TensorRT < 8.4
            config.max_workspace_size = opts["workspace_mb"] << 20
    if opts["precision"] in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if opts["precision"] == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        has_qdq = _network_has_qdq(trt, network)
        if opts["calibration_cache"] and has_qdq:
            # TensorRT takes explicit Q/DQ scales and ignores a calibrator; say so rather than pretend
            warnings.append(
                "calibration_cache %s not used: %s has Q/DQ layers, whose scales TensorRT takes instead"
                % (opts["calibration_cache"], onnx_path)
            )
        elif opts["calibration_cache"]:
            with open(opts["calibration_cache"], "rb") as handle:
                cache, notes = cache_for_this_tensorrt(handle.read(), trt.__version__)
            warnings.extend(notes)
            config.int8_calibrator = _make_cache_calibrator(trt, cache)
        elif not has_qdq:
            raise EngineError(
                "precision int8 needs a Q/DQ ONNX model or a calibration_cache, and %s has neither: build the "
                "artifact with --calib, or pass calibration_cache (the trt_calibration.cache edgekit quantize writes)"
                % onnx_path
            )
    if opts["sparsity"]:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if opts["dla_core"] is not None:
        if opts["dla_core"] >= builder.num_DLA_cores:
            raise EngineError(
                "tensorrt dla_core %d does not exist: this device has %d DLA core(s)"
                % (opts["dla_core"], builder.num_DLA_cores)
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts["dla_core"]
        if opts["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    _add_profile(builder, network, config, opts["profile_shapes"] or {})
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            "TensorRT could not build an engine from %s (%s): %s"
            % (onnx_path, opts["precision"], " | ".join(logger.lines[-8:]) or "see TensorRT's log")
        )
    return bytes(serialized)


def _add_profile(builder: Any, network: Any, config: Any, shapes: Dict[str, List[List[int]]]) -> None:
    """One optimization profile: the given [min, opt, max] per input; dynamic axes not given are fixed to 1
    (what trtexec does too)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise EngineError("tensorrt profile_shapes names %s, but the model's inputs are %s" % (unknown, names))
    profile = builder.create_optimization_profile()
    needed = False
    for tensor in inputs:
        dims = list(tensor.shape)
        if tensor.name in shapes:
            low, opt, high = shapes[tensor.name]
            if len(low) != len(dims):
                raise EngineError(
                    "tensorrt profile_shapes[%r] has rank %d, the input has shape %s" % (tensor.name, len(low), dims)
                )
        elif any(d < 0 for d in dims):
            low = opt = high = [d if d >= 0 else 1 for d in dims]
        else:
            continue
        profile.set_shape(tensor.name, low, opt, high)
        needed = True
    if needed:
        config.add_optimization_profile(profile)


def build_plan(
    trt: Any, logger: Any, onnx_path: str, opts: Dict[str, Any], warnings: Optional[List[str]] = None
) -> Tuple[bytes, str]:
    """(plan bytes, builder used): trtexec when use_trtexec is always, else the Python builder (auto: the
    bindings are here, since the registry checked for them before the engine opened). trtexec gets the option
    names of the TensorRT the bindings report."""
    if opts["use_trtexec"] == "always":
        trtexec = find_trtexec()
        if trtexec is None:
            raise EngineError(
                "use_trtexec is always but no trtexec was found on PATH or in %s: install JetPack's "
                "tensorrt samples or set use_trtexec to auto" % ", ".join(TRTEXEC_PATHS)
            )
        return build_with_trtexec(trtexec, onnx_path, opts, trt.__version__), "trtexec"
    return build_with_python(trt, logger, onnx_path, opts, warnings), "python"
