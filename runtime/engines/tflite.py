"""The TFLite/LiteRT engine: `ai_edge_litert` (preferred) or the older `tflite_runtime`, with a delegate.

Delegates: `xnnpack` (default: the interpreter's built-in CPU delegate), `none` (the reference kernels),
`gpu` and `nnapi` (shared libraries loaded by name on Android; NNAPI is deprecated from Android 15, where
Google points to the GPU delegate or vendor delegates), or a path to any delegate library. A delegate that
does not load is never silent: the engine falls back to XNNPACK on the CPU and says so in its facts'
`warnings` and `delegate` ("xnnpack (fallback from gpu)"). int8/uint8 inputs and outputs are quantized and
dequantized here from the tensors' own parameters, so the harness feeds and reads float32 either way.
Python 3.8-compatible.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import register_engine
from .base import Engine, EngineError, EngineOptions, TensorInfo

# library names a phone's LiteRT build ships the delegates under (the app's or Termux's lib folder)
DELEGATE_LIBRARIES = {
    "gpu": ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so"),
    "nnapi": ("libtensorflowlite_nnapi_delegate.so", "libnnapi_delegate.so"),
}
NNAPI_DEPRECATED = "NNAPI is deprecated from Android 15 (API 35): prefer the gpu delegate or a vendor delegate"


@dataclass(frozen=True)
class TfliteOptions(EngineOptions):
    delegate: str = field(
        default="xnnpack",
        metadata={
            "help": "xnnpack (the CPU), none (reference kernels), gpu, nnapi, or the path of a delegate library",
        },
    )
    delegate_options: Dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "for gpu, nnapi or a library: {key: value} handed to load_delegate, each as text",
        },
    )

    def check(self) -> None:
        EngineOptions.check(self)
        if not isinstance(self.delegate, str) or not self.delegate:
            raise EngineError(
                "tflite delegate must be xnnpack, none, gpu, nnapi or a library path, got %r" % (self.delegate,)
            )
        if not isinstance(self.delegate_options, dict):
            raise EngineError(
                "tflite delegate_options must be an object {key: value}, got %r" % (self.delegate_options,)
            )
        if self.delegate_options and self.delegate in ("xnnpack", "none"):
            raise EngineError(
                "tflite delegate_options go to a loaded delegate (gpu, nnapi or a library path); delegate %s takes "
                "none: drop them or choose that delegate" % self.delegate
            )


def _interpreter_module() -> Any:
    try:
        from ai_edge_litert import interpreter  # LiteRT, numpy 2 wheels

        return interpreter
    except ImportError:
        from tflite_runtime import interpreter  # older devices: tflite-runtime 2.14 and before

        return interpreter


def _module_version(module: Any) -> Optional[str]:
    package = module.__name__.split(".")[0]
    try:
        return __import__(package).__version__
    except (ImportError, AttributeError):
        try:
            from importlib.metadata import version  # Python 3.8+

            return version(package.replace("_", "-"))
        except Exception:  # not installed as a distribution (a vendored build): unknown
            return None


def quantize_input(value: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint(value / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize_output(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (value.astype(np.float32) - zero_point) * np.float32(scale)


@register_engine("tflite", package="ai-edge-litert (or tflite-runtime)", modules=("ai_edge_litert", "tflite_runtime"))
class TfliteEngine(Engine):
    """LiteRT with the options of `TfliteOptions` (threads: the interpreter's threads, None = its default)."""

    name = "tflite"
    Options = TfliteOptions
    config: TfliteOptions

    def __init__(self, model_path: str, options: Optional[Dict[str, Any]] = None) -> None:
        Engine.__init__(self, model_path, options)
        self._content: Optional[bytes] = None
        self._interpreter: Any = None
        self._delegate_used = "xnnpack"
        self._warnings: List[str] = []
        self._module: Any = None

    @classmethod
    def from_bytes(cls, content: bytes, options: Optional[Dict[str, Any]] = None) -> "TfliteEngine":
        """An engine over an in-memory model (the host's build-time check against ONNX Runtime)."""
        engine = cls("<in memory>", options)
        engine._content = content
        return engine

    def _make(self, **kwargs: Any) -> Any:
        source = {"model_content": self._content} if self._content is not None else {"model_path": self.model_path}
        if self.config.threads is not None:
            kwargs["num_threads"] = self.config.threads
        return self._module.Interpreter(**dict(source, **kwargs))

    def _load(self) -> None:
        self._module = _interpreter_module()
        delegate = self.config.delegate
        self._delegate_used = delegate  # _with_delegate names the fallback when the library does not load
        try:
            if delegate == "xnnpack":
                self._interpreter = self._make()
            elif delegate == "none":
                resolver = self._module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                self._interpreter = self._make(experimental_op_resolver_type=resolver)
            else:
                self._interpreter = self._with_delegate(delegate)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EngineError("cannot load TFLite model %s: %s" % (self.model_path, exc)) from exc
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        # the harness feeds float32: quantized inputs are converted in _infer_impl
        self.inputs = [
            TensorInfo(d["name"], np.dtype(np.float32), [int(v) for v in d["shape"]]) for d in self._input_details
        ]
        self.outputs = [
            TensorInfo(d["name"], np.dtype(np.float32), [int(v) for v in d["shape"]]) for d in self._output_details
        ]

    def _with_delegate(self, delegate: str) -> Any:
        names = DELEGATE_LIBRARIES.get(delegate, (delegate,))
        if delegate == "nnapi":
            self._warnings.append(NNAPI_DEPRECATED)
        errors = []
        for library in names:
            try:
                loaded = self._module.load_delegate(library, dict(self.config.delegate_options))
            except (OSError, ValueError, RuntimeError) as exc:
                errors.append("%s: %s" % (library, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                continue
            return self._make(experimental_delegates=[loaded])
        self._delegate_used = "xnnpack (fallback from %s)" % delegate
        self._warnings.append(
            "delegate %s did not load (%s); running on the CPU with XNNPACK instead: install the delegate library "
            "on the device or choose another delegate" % (delegate, "; ".join(errors))
        )
        return self._make()

    def _close(self) -> None:
        self._interpreter = None

    def _infer_impl(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        interpreter = self._interpreter
        for detail in self._input_details:
            value = feed[detail["name"]]
            if detail["dtype"] in (np.int8, np.uint8):
                scale, zero_point = detail["quantization"]
                value = quantize_input(value, np.dtype(detail["dtype"]), scale, zero_point)
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        outputs = []
        for detail in self._output_details:
            value = interpreter.get_tensor(detail["index"])
            if detail["dtype"] in (np.int8, np.uint8):
                scale, zero_point = detail["quantization"]
                value = dequantize_output(value, scale, zero_point)
            outputs.append(np.array(value))  # a copy: the interpreter reuses its buffers
        return outputs

    def facts(self) -> Dict[str, Any]:
        module = self._module or _interpreter_module()
        return {
            "name": self.name,
            "runtime": module.__name__.split(".")[0],
            "version": _module_version(module),
            "providers": [self._delegate_used],
            "delegate": self._delegate_used,
            "threads": self.config.threads,
            "input_dtype": [np.dtype(d["dtype"]).name for d in getattr(self, "_input_details", [])],
            "warnings": list(self._warnings),
        }
