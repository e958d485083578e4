"""The TensorRT engine: builds a TensorRT engine from the artifact's ONNX on the device, caches it, runs it.

An engine plan only runs on the TensorRT version and GPU that built it, so the artifact carries ONNX and
the device builds (with the Python builder, or the `trtexec` binary) once; the plan is cached under a
key of the ONNX bytes, TensorRT version, GPU and build options. A cached plan that no longer
deserializes (corrupt, or another TensorRT) is rebuilt once, and the facts say so.

Written against TensorRT's documented Python API: TensorRT 8.5 (JetPack 5) to 10.x (JetPack 6). The
tensor API (`num_io_tensors`, `set_tensor_address`, `execute_async_v3`, TensorRT >= 8.5) is used when
present, else the bindings API (`num_bindings`, `execute_async_v2`). CUDA comes from cuda-python, else
pycuda. `tensorrt` and the CUDA library are imported when the engine loads. Python 3.8-compatible.

Everything below the "hardware line" (the `_load`/`_infer_impl` paths) needs an NVIDIA GPU; the pure
helpers above it (options, cache key, trtexec command and output, cache file handling) are tested here.
"""

import ctypes
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...manifest import sha256_file
from .. import register_engine
from ..base import Engine, EngineError, EngineUnavailable, TensorInfo

PRECISIONS = ("fp32", "fp16", "int8")
TRTEXEC_MODES = ("auto", "never", "always")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "edgekit", "trt-engines")
# JetPack installs trtexec here, outside PATH
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
TRTEXEC_TIMEOUT_S = 3600  # big models on a Nano take tens of minutes to build

_OPTIONS = (
    "precision",
    "calibration_cache",
    "dla_core",
    "gpu_fallback",
    "sparsity",
    "workspace_mb",
    "profile_shapes",
    "cache_dir",
    "use_trtexec",
    "layer_profile",
    "threads",  # the agent passes plan engine.threads to every engine; TensorRT has no such knob: ignored
)

# -- options ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_profile_shapes(value: Any) -> Optional[Dict[str, List[List[int]]]]:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise EngineError("tensorrt profile_shapes must be an object {input: [min, opt, max]}, got %r" % (value,))
    shapes: Dict[str, List[List[int]]] = {}
    for name, triple in value.items():
        ok = isinstance(triple, (list, tuple)) and len(triple) == 3
        ok = ok and all(isinstance(s, (list, tuple)) and s and all(_is_int(d) and d > 0 for d in s) for s in triple)
        if not ok or len(set(len(s) for s in triple)) != 1:
            raise EngineError(
                "tensorrt profile_shapes[%r] must be three shapes of the same rank with positive ints, "
                "[min, opt, max], e.g. [[1,3,224,224],[4,3,224,224],[8,3,224,224]]; got %r" % (name, triple)
            )
        low, opt, high = ([int(d) for d in s] for s in triple)
        if any(not (low[i] <= opt[i] <= high[i]) for i in range(len(low))):
            raise EngineError(
                "tensorrt profile_shapes[%r]: need min <= opt <= max on every axis, got %r" % (name, triple)
            )
        shapes[str(name)] = [low, opt, high]
    return shapes


def validate_options(options: Dict[str, Any], model_dir: str = ".") -> Dict[str, Any]:
    """Check the plan's engine options and fill in defaults; raises EngineError naming the bad one.

    A relative `calibration_cache` is taken relative to the model's folder (the artifact)."""
    unknown = sorted(k for k in options if k not in _OPTIONS)
    if unknown:
        raise EngineError("tensorrt engine options %s are unknown; known: %s" % (unknown, ", ".join(_OPTIONS)))
    opts = dict(options)
    precision = opts.get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise EngineError("tensorrt precision %r: use one of %s" % (precision, ", ".join(PRECISIONS)))
    dla_core = opts.get("dla_core")
    if dla_core is not None and not (_is_int(dla_core) and dla_core >= 0):
        raise EngineError("tensorrt dla_core must be null or a DLA core number (0, 1), got %r" % (dla_core,))
    if dla_core is not None and precision == "fp32":
        raise EngineError("tensorrt dla_core needs precision fp16 or int8: the DLA does not run fp32")
    flags = {}
    for key in ("gpu_fallback", "sparsity", "layer_profile"):
        flags[key] = opts.get(key, False)
        if not isinstance(flags[key], bool):
            raise EngineError("tensorrt %s must be true or false, got %r" % (key, flags[key]))
    if flags["gpu_fallback"] and dla_core is None:
        raise EngineError("tensorrt gpu_fallback only applies with dla_core: set dla_core or drop gpu_fallback")
    workspace = opts.get("workspace_mb")
    if workspace is not None and not (_is_int(workspace) and workspace > 0):
        raise EngineError("tensorrt workspace_mb must be a positive integer (MiB), got %r" % (workspace,))
    mode = opts.get("use_trtexec") or "auto"
    if mode not in TRTEXEC_MODES:
        raise EngineError("tensorrt use_trtexec %r: use one of %s" % (mode, ", ".join(TRTEXEC_MODES)))
    calib = opts.get("calibration_cache")
    if calib is not None:
        if not isinstance(calib, str) or not calib:
            raise EngineError("tensorrt calibration_cache must be a file path, got %r" % (calib,))
        calib = os.path.join(model_dir, os.path.expanduser(calib))
        if not os.path.isfile(calib):
            raise EngineError(
                "tensorrt calibration_cache %s does not exist: push it with the artifact (edgekit quantize writes "
                "trt_calibration.cache) or drop the option" % calib
            )
        if precision != "int8":
            raise EngineError("tensorrt calibration_cache is only used with precision int8, not %s" % precision)
    cache_dir = opts.get("cache_dir") or DEFAULT_CACHE_DIR
    if not isinstance(cache_dir, str):
        raise EngineError("tensorrt cache_dir must be a folder path, got %r" % (cache_dir,))
    return {
        "precision": precision,
        "calibration_cache": calib,
        "dla_core": dla_core,
        "gpu_fallback": flags["gpu_fallback"],
        "sparsity": flags["sparsity"],
        "workspace_mb": workspace,
        "profile_shapes": _check_profile_shapes(opts.get("profile_shapes")),
        "cache_dir": os.path.expanduser(cache_dir),
        "use_trtexec": mode,
        "layer_profile": flags["layer_profile"],
    }


# -- engine cache ----------------------------------------------------------------------------------------


def build_options_for_key(opts: Dict[str, Any]) -> Dict[str, Any]:
    """The options that change the built plan (the calibration cache by content, not by path); where the
    cache lives, how it is built and whether layers are profiled at run time do not."""
    calib = opts.get("calibration_cache")
    return {
        "precision": opts["precision"],
        "calibration_cache_sha256": sha256_file(calib) if calib else None,
        "dla_core": opts["dla_core"],
        "gpu_fallback": opts["gpu_fallback"],
        "sparsity": opts["sparsity"],
        "workspace_mb": opts["workspace_mb"],
        "profile_shapes": opts["profile_shapes"],
    }


def engine_cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, build_options: Dict[str, Any]
) -> str:
    """sha256 over everything a plan depends on; canonical JSON so key order never matters."""
    blob = json.dumps(
        {
            "onnx_sha256": onnx_sha256,
            "tensorrt": trt_version,
            "gpu": gpu_name,
            "compute_capability": compute_capability,
            "build": build_options,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def engine_file_name(model_path: str, key: str, precision: str, dla_core: Optional[int], trt_version: str) -> str:
    """A name a person can read in `ls`: model, precision, DLA core, TensorRT version, then the key."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(model_path))[0]) or "model"
    parts = [stem, precision] + (["dla%d" % dla_core] if dla_core is not None else []) + ["trt" + trt_version]
    return "%s.%s.engine" % (".".join(parts), key[:16])


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename it, so a reader (another agent, a
    killed build) never sees half a plan."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_build(
    engine_path: str, build: Callable[[], bytes], deserialize: Callable[[bytes], Any]
) -> Tuple[Any, Dict[str, Any]]:
    """The cached plan when it deserializes; else build, cache atomically and deserialize.

    A cached plan that deserializes to None (or raises) is deleted and rebuilt once; `info` says so.
    Returns (engine, info) with info keys from_cache, rebuilt_bad_cache, build_s, warnings."""
    info: Dict[str, Any] = {"from_cache": False, "rebuilt_bad_cache": False, "build_s": None, "warnings": []}
    if os.path.isfile(engine_path):
        with open(engine_path, "rb") as handle:
            engine = _try_deserialize(deserialize, handle.read())
        if engine is not None:
            info["from_cache"] = True
            return engine, info
        info["rebuilt_bad_cache"] = True
        info["warnings"].append(
            "cached TensorRT engine %s could not be deserialized (corrupt, or built by another TensorRT or GPU): "
            "deleted and rebuilt" % engine_path
        )
        os.unlink(engine_path)
    start = time.perf_counter()
    data = build()
    info["build_s"] = round(time.perf_counter() - start, 3)
    write_atomic(engine_path, data)
    engine = _try_deserialize(deserialize, data)
    if engine is None:
        raise EngineError(
            "TensorRT built %s but cannot deserialize it: the TensorRT install is inconsistent (trtexec and the "
            "Python bindings from different versions?); reinstall JetPack's TensorRT" % engine_path
        )
    return engine, info


def _try_deserialize(deserialize: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return deserialize(data)
    except Exception:  # TensorRT 8 returns None, some builds raise: both mean "not usable here"
        return None


# -- trtexec ---------------------------------------------------------------------------------------------


def find_trtexec(candidates: Sequence[str] = TRTEXEC_PATHS) -> Optional[str]:
    found = shutil.which("trtexec")
    if found:
        return found
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _shape_arg(shapes: Dict[str, List[List[int]]], which: int) -> str:
    # trtexec takes 'name':dims; names with ':' or ',' must be wrapped in single quotes (its --help says so)
    items = []
    for name, triple in sorted(shapes.items()):
        shown = "'%s'" % name if re.search(r"[:,]", name) else name
        items.append("%s:%s" % (shown, "x".join(str(d) for d in triple[which])))
    return ",".join(items)


def trtexec_command(trtexec: str, onnx_path: str, engine_path: str, opts: Dict[str, Any]) -> List[str]:
    """The trtexec argv that builds what the Python builder would (TensorRT 8.5 to 10 flag names).

    int8 also allows fp16 for layers INT8 does not cover, like the Python builder below.
    `--memPoolSize=workspace:N` without a unit is MiB in both TensorRT 8.x and 10.x."""
    cmd = [trtexec, "--onnx=%s" % onnx_path, "--saveEngine=%s" % engine_path, "--skipInference"]
    if opts["precision"] in ("fp16", "int8"):
        cmd.append("--fp16")
    if opts["precision"] == "int8":
        cmd.append("--int8")
        if opts.get("calibration_cache"):
            cmd.append("--calib=%s" % opts["calibration_cache"])
    if opts.get("dla_core") is not None:
        cmd.append("--useDLACore=%d" % opts["dla_core"])
        if opts.get("gpu_fallback"):
            cmd.append("--allowGPUFallback")
    if opts.get("sparsity"):
        cmd.append("--sparsity=enable")
    if opts.get("workspace_mb"):
        cmd.append("--memPoolSize=workspace:%d" % opts["workspace_mb"])
    shapes = opts.get("profile_shapes")
    if shapes:
        for flag, which in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            cmd.append("%s=%s" % (flag, _shape_arg(shapes, which)))
    return cmd


def trtexec_benchmark_command(trtexec: str, engine_path: str, dla_core: Optional[int] = None) -> List[str]:
    """trtexec timing a cached plan: a second opinion on the agent's numbers (GPU compute only)."""
    cmd = [trtexec, "--loadEngine=%s" % engine_path]
    if dla_core is not None:
        cmd.append("--useDLACore=%d" % dla_core)
    return cmd


# Written against trtexec's documented "Performance summary" lines (TensorRT 8.x and 10.x), e.g.
#   [08/11/2022-06:55:33] [I] Throughput: 233.689 qps
#   [08/11/2022-06:55:33] [I] GPU Compute Time: min = 4.23773 ms, max = 5.25439 ms, mean = 4.26986 ms,
#       median = 4.25195 ms, percentile(90%) = 4.3 ms, percentile(95%) = 4.4 ms, percentile(99%) = 5.24138 ms
# (one line each; older versions print only percentile(99%)); numbers may be in e-notation.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SUMMARY_KEYS = {
    "Latency": "latency_ms",
    "End-to-End Host Latency": "host_latency_ms",
    "Enqueue Time": "enqueue_ms",
    "H2D Latency": "h2d_ms",
    "GPU Compute Time": "gpu_compute_ms",
    "D2H Latency": "d2h_ms",
}
_SUMMARY_RE = re.compile(r"^(?:\[[^\]]*\]\s*)*(%s):\s*(.*)$" % "|".join(re.escape(k) for k in _SUMMARY_KEYS))
_STAT_RE = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*(" + _NUMBER + r")\s*ms")
_THROUGHPUT_RE = re.compile(r"^(?:\[[^\]]*\]\s*)*Throughput:\s*(" + _NUMBER + r")\s*qps")


def parse_trtexec_output(text: str) -> Dict[str, Any]:
    """trtexec's performance summary as numbers: throughput_qps and, per timed quantity, min/max/mean/median
    and pNN in ms. Keys that trtexec did not print are absent; `passed` is trtexec's own verdict."""
    result: Dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip()
        match = _THROUGHPUT_RE.match(line)
        if match:
            result["throughput_qps"] = float(match.group(1))
            continue
        match = _SUMMARY_RE.match(line)
        if not match:
            continue
        stats: Dict[str, float] = {}
        for stat, pct, value in _STAT_RE.findall(match.group(2)):
            key = "p%g" % float(pct) if pct else stat  # percentile(99.9%) -> p99.9
            stats[key] = float(value)
        if stats:
            result[_SUMMARY_KEYS[match.group(1)]] = stats
    if "&&&& PASSED TensorRT.trtexec" in text:
        result["passed"] = True
    elif "&&&& FAILED TensorRT.trtexec" in text:
        result["passed"] = False
    return result


def build_with_trtexec(
    trtexec: str, onnx_path: str, opts: Dict[str, Any], timeout_s: float = TRTEXEC_TIMEOUT_S
) -> bytes:
    """Run trtexec into a temporary file and return the plan's bytes (the caller caches them atomically)."""
    fd, tmp = tempfile.mkstemp(prefix="edgekit-trtexec.", suffix=".engine")
    os.close(fd)
    try:
        cmd = trtexec_command(trtexec, onnx_path, tmp, opts)
        try:
            run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EngineError("trtexec did not finish building %s within %d s" % (onnx_path, timeout_s)) from None
        except OSError as exc:
            raise EngineError("cannot run %s: %s" % (trtexec, exc)) from exc
        log = run.stdout.decode("utf-8", "replace")
        if run.returncode != 0 or os.path.getsize(tmp) == 0:
            tail = "\n".join(log.strip().splitlines()[-15:])
            raise EngineError(
                "trtexec could not build %s (exit %d); command: %s\n%s"
                % (onnx_path, run.returncode, " ".join(cmd), tail)
            )
        with open(tmp, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(tmp)


# -- CUDA ------------------------------------------------------------------------------------------------

CUDA_CHOICES = (
    ("cuda-python", ("cuda.bindings.runtime", "cuda.cudart")),  # cuda-python >= 12.6 moved cudart
    ("pycuda", ("pycuda.driver",)),
)


def choose_cuda(importer: Callable[[str], Any] = importlib.import_module) -> Tuple[str, Any]:
    """(name, module): cuda-python's runtime first, pycuda's driver second; EngineUnavailable names both."""
    failures = []
    for name, modules in CUDA_CHOICES:
        reasons = []
        for module in modules:
            try:
                return name, importer(module)
            except ImportError as exc:
                reasons.append("%s: %s" % (module, exc))
        failures.append("%s (%s)" % (name, "; ".join(reasons)))
    raise EngineUnavailable(
        "engine 'tensorrt' needs a CUDA Python library and neither imports: %s. Install one on the device: "
        "`pip install cuda-python` (the version matching JetPack's CUDA) or `pip install pycuda`"
        % " and ".join(failures)
    )


class _CudaPython(object):
    """cuda-python's runtime API: every call returns (error, values...)."""

    name = "cuda-python"

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def _ok(self, result: Any, what: str) -> Any:
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise EngineError("CUDA %s failed: %s" % (what, err))
        return result[1] if len(result) == 2 else result[1:]

    def enter(self) -> None:  # the runtime API makes device 0's primary context current in any thread
        pass

    def exit(self) -> None:
        pass

    def device(self) -> Tuple[str, str]:
        props = self._ok(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name.decode("utf-8", "replace") if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), "%d.%d" % (props.major, props.minor)

    def alloc(self, nbytes: int) -> Tuple[Any, int]:
        ptr = self._ok(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        return ptr, int(ptr)

    def free(self, handle: Any) -> None:
        self.rt.cudaFree(handle)

    def host_empty(self, count: int, dtype: np.dtype) -> Tuple[Any, np.ndarray]:
        # pinned memory, viewed as numpy, as TensorRT's own samples do
        ptr = self._ok(self.rt.cudaMallocHost(max(count, 1) * dtype.itemsize), "cudaMallocHost")
        pointer = ctypes.cast(int(ptr), ctypes.POINTER(ctypes.c_uint8))
        raw = np.ctypeslib.as_array(pointer, (max(count, 1) * dtype.itemsize,))
        return ptr, raw.view(dtype)[:count]

    def host_free(self, handle: Any) -> None:
        self.rt.cudaFreeHost(handle)

    def stream(self) -> Any:
        return self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        self.rt.cudaStreamDestroy(stream)

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync")

    def sync(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event(self) -> Any:
        return self._ok(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def destroy_event(self, event: Any) -> None:
        self.rt.cudaEventDestroy(event)


class _PyCuda(object):
    """pycuda's driver API on device 0's primary context (the one TensorRT's runtime calls use), pushed
    around every call because the pipelined harness runs inference in its own thread."""

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self.cuda = driver
        driver.init()
        self.context = driver.Device(0).retain_primary_context()

    def enter(self) -> None:
        self.context.push()

    def exit(self) -> None:
        self.cuda.Context.pop()

    def device(self) -> Tuple[str, str]:
        dev = self.cuda.Device(0)
        return dev.name(), "%d.%d" % dev.compute_capability()

    def alloc(self, nbytes: int) -> Tuple[Any, int]:
        mem = self.cuda.mem_alloc(max(nbytes, 1))
        return mem, int(mem)

    def free(self, handle: Any) -> None:
        handle.free()

    def host_empty(self, count: int, dtype: np.dtype) -> Tuple[Any, np.ndarray]:
        array = self.cuda.pagelocked_empty(max(count, 1), dtype)
        return array, array[:count]

    def host_free(self, handle: Any) -> None:
        base = getattr(handle, "base", None)  # pagelocked_empty's HostAllocation
        if base is not None and hasattr(base, "free"):
            base.free()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        pass  # freed with the object

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.time_till(end))

    def destroy_event(self, event: Any) -> None:
        pass


def open_cuda(importer: Callable[[str], Any] = importlib.import_module) -> Any:
    name, module = choose_cuda(importer)
    return _CudaPython(module) if name == "cuda-python" else _PyCuda(module)


# -- the engine (needs TensorRT and an NVIDIA GPU) -------------------------------------------------------


def _volume(shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


class _Slot(object):
    """One input or output: its pinned host and device buffers, sized for the largest shape it can take."""

    def __init__(self, index: int, name: str, is_input: bool, dtype: np.dtype, shape: List[int]) -> None:
        self.index, self.name, self.is_input, self.dtype = index, name, is_input, dtype
        self.shape = shape  # the current concrete shape
        self.capacity = 0
        self.host: Any = None
        self.host_handle: Any = None
        self.device: Any = None
        self.ptr = 0

    def view(self, shape: Sequence[int]) -> np.ndarray:
        return self.host[: _volume(shape)].reshape(tuple(shape))


def _make_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        """Keeps TensorRT's warnings and errors so a failed build can say why."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR, trt.ILogger.WARNING):
                self.lines = (self.lines + ["%s: %s" % (severity, msg)])[-30:]

    return _Logger()


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


def _make_layer_profiler(trt: Any) -> Any:
    class _LayerProfiler(trt.IProfiler):
        """Per-layer times TensorRT reports after each execution (ms summed, and counted)."""

        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.total_ms: Dict[str, float] = {}
            self.count: Dict[str, int] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.total_ms[layer_name] = self.total_ms.get(layer_name, 0.0) + ms
            self.count[layer_name] = self.count.get(layer_name, 0) + 1

    return _LayerProfiler()


def _network_has_qdq(trt: Any, network: Any) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def build_with_python(trt: Any, logger: Any, onnx_path: str, opts: Dict[str, Any]) -> bytes:
    """Parse the ONNX and build a serialized plan with TensorRT's Python builder (its documented sample flow)."""
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
        if opts["calibration_cache"]:
            with open(opts["calibration_cache"], "rb") as handle:
                config.int8_calibrator = _make_cache_calibrator(trt, handle.read())
        elif not _network_has_qdq(trt, network):
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


@register_engine(
    "tensorrt", package="tensorrt (JetPack's python3-libnvinfer) and cuda-python or pycuda", modules=("tensorrt",)
)
class TensorRtEngine(Engine):
    """TensorRT on an NVIDIA GPU or a Jetson's DLA. Options: precision (fp32|fp16|int8), calibration_cache,
    dla_core, gpu_fallback, sparsity, workspace_mb, profile_shapes, cache_dir, use_trtexec
    (auto|never|always; auto builds with the Python bindings, which are present whenever this engine opens),
    layer_profile; `threads` is accepted and ignored. `last_gpu_ms` holds the GPU time of the last inference
    (CUDA events around the execution, copies excluded)."""

    name = "tensorrt"

    def __init__(self, model_path: str, options: Optional[Dict[str, Any]] = None) -> None:
        Engine.__init__(self, model_path, options)
        self.settings = validate_options(self.options, os.path.dirname(os.path.abspath(model_path)))
        self.last_gpu_ms: Optional[float] = None
        self.build_info: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self._trt: Any = None
        self._cuda: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._slots: List[_Slot] = []
        self._profiler: Any = None
        self._runtime: Any = None
        self._tensor_api = False

    # -- load ------------------------------------------------------------------------------------------

    def _load(self) -> None:
        import tensorrt as trt

        self._trt = trt
        self._cuda = open_cuda()
        self._cuda.enter()
        try:
            self._load_engine(trt)
            self._setup_io(trt)
        except BaseException:
            self._release()
            raise
        finally:
            self._cuda.exit()

    def _load_engine(self, trt: Any) -> None:
        opts = self.settings
        if not os.path.isfile(self.model_path):
            raise EngineError("ONNX model %s does not exist: rebuild or re-push the artifact" % self.model_path)
        gpu, capability = self._cuda.device()
        key = engine_cache_key(
            sha256_file(self.model_path), trt.__version__, gpu, capability, build_options_for_key(opts)
        )
        path = os.path.join(
            opts["cache_dir"],
            engine_file_name(self.model_path, key, opts["precision"], opts["dla_core"], trt.__version__),
        )
        logger = _make_logger(trt)
        builder_used: List[str] = []

        def build() -> bytes:
            trtexec = find_trtexec() if opts["use_trtexec"] != "never" else None
            if opts["use_trtexec"] == "always":
                if trtexec is None:
                    raise EngineError(
                        "use_trtexec is always but no trtexec was found on PATH or in %s: install JetPack's "
                        "tensorrt samples or set use_trtexec to auto" % ", ".join(TRTEXEC_PATHS)
                    )
                builder_used.append("trtexec")
                return build_with_trtexec(trtexec, self.model_path, opts)
            builder_used.append("python")  # auto: the bindings are here (the registry checked)
            return build_with_python(trt, logger, self.model_path, opts)

        runtime = trt.Runtime(logger)
        if opts["dla_core"] is not None:
            runtime.DLA_core = opts["dla_core"]
        self._runtime = runtime
        self._engine, info = load_or_build(path, build, runtime.deserialize_cuda_engine)
        self.warnings.extend(info.pop("warnings"))
        self.build_info = dict(
            info, cache_key=key, engine_file=path, builder=builder_used[0] if builder_used else None,
            gpu=gpu, compute_capability=capability,
        )  # fmt: skip

    def _setup_io(self, trt: Any) -> None:
        engine = self._engine
        self._tensor_api = hasattr(engine, "num_io_tensors")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(
                "TensorRT cannot create an execution context for %s: out of GPU memory?" % self.model_path
            )
        if self.settings["layer_profile"]:
            self._profiler = _make_layer_profiler(trt)
            self._context.profiler = self._profiler
        count = engine.num_io_tensors if self._tensor_api else engine.num_bindings
        for index in range(count):
            if self._tensor_api:
                name = engine.get_tensor_name(index)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                shape = list(engine.get_tensor_shape(name))
            else:
                name = engine.get_binding_name(index)
                is_input = engine.binding_is_input(index)
                dtype = np.dtype(trt.nptype(engine.get_binding_dtype(index)))
                shape = list(engine.get_binding_shape(index))
            slot = _Slot(index, name, is_input, dtype, shape)
            self._slots.append(slot)
            info = TensorInfo(name, dtype, [d if d >= 0 else None for d in shape])
            (self.inputs if is_input else self.outputs).append(info)
        # size every buffer for the largest shapes the profile allows; each frame then sets its own shape
        for slot in self._inputs():
            if any(d < 0 for d in slot.shape):
                self._set_input_shape(slot, self._profile_shape(slot)[2])
            slot.capacity = _volume(slot.shape)
        for slot in self._outputs():
            slot.shape = self._output_shape(slot)
            if any(d < 0 for d in slot.shape):
                raise EngineError(
                    "output %r of %s has a data-dependent shape %s, which this engine does not support"
                    % (slot.name, self.model_path, slot.shape)
                )
            slot.capacity = _volume(slot.shape)
        for slot in self._slots:
            slot.host_handle, slot.host = self._cuda.host_empty(slot.capacity, slot.dtype)
            slot.device, slot.ptr = self._cuda.alloc(slot.capacity * slot.dtype.itemsize)
            if self._tensor_api:
                self._context.set_tensor_address(slot.name, slot.ptr)
        self._bindings = [s.ptr for s in sorted(self._slots, key=lambda s: s.index)]
        self._stream = self._cuda.stream()
        self._start, self._end = self._cuda.event(), self._cuda.event()

    def _inputs(self) -> List[_Slot]:
        return [s for s in self._slots if s.is_input]

    def _outputs(self) -> List[_Slot]:
        return [s for s in self._slots if not s.is_input]

    def _profile_shape(self, slot: _Slot) -> List[List[int]]:
        if self._tensor_api:
            shapes = self._engine.get_tensor_profile_shape(slot.name, 0)
        else:
            shapes = self._engine.get_profile_shape(0, slot.index)
        return [list(s) for s in shapes]

    def _set_input_shape(self, slot: _Slot, shape: Sequence[int]) -> None:
        ok = (
            self._context.set_input_shape(slot.name, tuple(shape))
            if self._tensor_api
            else self._context.set_binding_shape(slot.index, tuple(shape))
        )
        if ok is False:
            raise EngineError(
                "input %r shape %s is outside the engine's optimization profile %s: set profile_shapes in the "
                "plan's engine options" % (slot.name, list(shape), self._profile_shape(slot))
            )
        slot.shape = list(shape)

    def _output_shape(self, slot: _Slot) -> List[int]:
        if self._tensor_api:
            return list(self._context.get_tensor_shape(slot.name))
        return list(self._context.get_binding_shape(slot.index))

    # -- run -------------------------------------------------------------------------------------------

    def _infer_impl(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        cuda, stream = self._cuda, self._stream
        cuda.enter()
        try:
            reshaped = False
            for slot in self._inputs():
                value = feed[slot.name]
                if list(value.shape) != slot.shape:
                    if _volume(value.shape) > slot.capacity:
                        raise EngineError(
                            "input %r shape %s is larger than the engine's maximum %s: set profile_shapes"
                            % (slot.name, value.shape, self._profile_shape(slot)[2])
                        )
                    self._set_input_shape(slot, value.shape)
                    reshaped = True
                host = slot.view(slot.shape)
                np.copyto(host, value)
                cuda.htod(slot.ptr, host, stream)
            if reshaped:
                for slot in self._outputs():
                    slot.shape = self._output_shape(slot)
            cuda.record(self._start, stream)
            if self._tensor_api:
                ok = self._context.execute_async_v3(cuda.stream_handle(stream))
            elif self._profiler is not None:  # before TensorRT 8.5 only the synchronous call is profiled
                ok = self._context.execute_v2(self._bindings)
            else:
                ok = self._context.execute_async_v2(self._bindings, cuda.stream_handle(stream))
            cuda.record(self._end, stream)
            outputs = []
            for slot in self._outputs():
                host = slot.view(slot.shape)
                cuda.dtoh(host, slot.ptr, stream)
                outputs.append(host)
            cuda.sync(stream)
            if not ok:
                raise EngineError("TensorRT failed to run %s (execute returned false)" % self.model_path)
            self.last_gpu_ms = cuda.elapsed_ms(self._start, self._end)
            return [o.copy() for o in outputs]  # the pinned buffers are reused by the next frame
        finally:
            cuda.exit()

    def layer_times_ms(self) -> Dict[str, float]:
        """Mean time per layer over the runs so far (layer_profile only; empty otherwise)."""
        p = self._profiler
        return {} if p is None else dict((k, p.total_ms[k] / p.count[k]) for k in p.total_ms)

    # -- close / facts ---------------------------------------------------------------------------------

    def _close(self) -> None:
        self._cuda.enter()
        try:
            self._release()
        finally:
            self._cuda.exit()

    def _release(self) -> None:
        cuda = self._cuda
        for slot in self._slots:
            if slot.device is not None:
                cuda.free(slot.device)
            if slot.host_handle is not None:
                cuda.host_free(slot.host_handle)
        self._slots = []
        for attr in ("_start", "_end"):
            if getattr(self, attr, None) is not None:
                cuda.destroy_event(getattr(self, attr))
                setattr(self, attr, None)
        if getattr(self, "_stream", None) is not None:
            cuda.destroy_stream(self._stream)
            self._stream = None
        self._context = None
        self._engine = None

    def facts(self) -> Dict[str, Any]:
        info = self.build_info
        return {
            "name": self.name,
            "version": getattr(self._trt, "__version__", None),
            "providers": [],
            "threads": None,
            "precision": self.settings["precision"],
            "dla_core": self.settings["dla_core"],
            "gpu_fallback": self.settings["gpu_fallback"],
            "sparsity": self.settings["sparsity"],
            "from_cache": info.get("from_cache"),
            "rebuilt_bad_cache": info.get("rebuilt_bad_cache"),
            "cache_key": info.get("cache_key"),
            "engine_file": info.get("engine_file"),
            "builder": info.get("builder"),
            "build_s": info.get("build_s"),
            "gpu": info.get("gpu"),
            "compute_capability": info.get("compute_capability"),
            "cuda": getattr(self._cuda, "name", None),
            "api": "tensors" if self._tensor_api else "bindings",
            "layer_profile": self.settings["layer_profile"],
            "warnings": list(self.warnings),
        }
