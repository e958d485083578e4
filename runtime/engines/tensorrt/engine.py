"""The TensorRT engine the agent opens: builds (or takes from the cache) a plan for the artifact's ONNX, then
runs it with pinned host buffers, one CUDA stream and CUDA events around each execution.

Needs TensorRT and an NVIDIA GPU: `tensorrt` and the CUDA library are imported when the engine loads. The
tensor API (`num_io_tensors`, `set_tensor_address`, `execute_async_v3`, TensorRT >= 8.5) is used when
present, else the bindings API (`num_bindings`, `execute_async_v2`). Python 3.8-compatible.
"""

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ...manifest import sha256_file
from .. import register_engine
from ..base import Engine, EngineError, TensorInfo
from .builder import build_plan, make_logger
from .cache import build_options_for_key, engine_cache_key, engine_file_name, load_or_build
from .cuda import open_cuda
from .options import validate_options


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
        logger = make_logger(trt)
        builder_used: List[str] = []

        def build() -> bytes:
            data, used = build_plan(trt, logger, self.model_path, opts, self.warnings)
            builder_used.append(used)
            return data

        runtime = trt.Runtime(logger)
        if opts["dla_core"] is not None:
            runtime.DLA_core = opts["dla_core"]
        self._runtime = runtime
        self._engine, info = load_or_build(path, build, runtime.deserialize_cuda_engine)
        self.warnings.extend(info.pop("warnings"))
        self.build_info = dict(
            info,
            cache_key=key,
            engine_file=path,
            builder=builder_used[0] if builder_used else None,
            gpu=gpu,
            compute_capability=capability,
        )

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
