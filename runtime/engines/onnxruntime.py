"""The ONNX Runtime engine: an InferenceSession with graph optimisation ALL and chosen providers/threads.

`onnxruntime` is imported when the engine loads, so the registry can list this engine on devices that
lack the library and say what to install. Python 3.8-compatible.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import register_engine
from .base import Engine, EngineError, EngineOptions, TensorInfo

# ONNX element types as ORT names them -> numpy
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

_OPTIMIZATION_LEVELS = ("all", "extended", "basic", "disable")


@dataclass(frozen=True)
class OnnxRuntimeOptions(EngineOptions):
    inter_op_threads: Optional[int] = field(default=None, metadata={"help": "threads across independent nodes"})
    providers: Optional[List[str]] = field(
        default=None,
        metadata={
            "help": 'execution providers in order of preference; default ["CPUExecutionProvider"]',
        },
    )
    provider_options: Optional[List[Dict[str, Any]]] = field(
        default=None,
        metadata={
            "help": "one object of options per provider, as InferenceSession takes them",
        },
    )
    graph_optimization: str = field(default="all", metadata={"help": "all, extended, basic or disable"})

    def check(self) -> None:
        EngineOptions.check(self)
        if self.graph_optimization not in _OPTIMIZATION_LEVELS:
            raise EngineError(
                "onnxruntime graph_optimization %r: use one of %s"
                % (self.graph_optimization, ", ".join(_OPTIMIZATION_LEVELS))
            )


def _tensor_info(node: Any) -> TensorInfo:
    dtype = _ORT_DTYPES.get(node.type)
    shape = [d if isinstance(d, int) else (d if isinstance(d, str) else None) for d in (node.shape or [])]
    return TensorInfo(node.name, np.dtype(dtype) if dtype is not None else None, shape)


@register_engine("onnxruntime", package="onnxruntime", modules=("onnxruntime",))
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime, with the options of `OnnxRuntimeOptions` (threads: intra-op threads)."""

    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    config: OnnxRuntimeOptions

    def __init__(self, model_path: str, options: Optional[Dict[str, Any]] = None) -> None:
        Engine.__init__(self, model_path, options)
        self._session: Any = None
        self._output_list: List[str] = []

    def _load(self) -> None:
        import onnxruntime as ort

        self._ort = ort
        config = self.config
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[config.graph_optimization]
        if config.threads is not None:
            opts.intra_op_num_threads = config.threads
        if config.inter_op_threads is not None:
            opts.inter_op_num_threads = int(config.inter_op_threads)
        providers = list(config.providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise EngineError(
                "onnxruntime providers %s are not available on this device (available: %s): install the "
                "matching onnxruntime package (e.g. onnxruntime-gpu) or drop them from engine options"
                % (missing, ", ".join(ort.get_available_providers()))
            )
        try:
            self._session = ort.InferenceSession(
                self.model_path, sess_options=opts, providers=providers, provider_options=config.provider_options
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise EngineError(
                "onnxruntime cannot load model file %s (%s: %s): the file is corrupt, truncated or not an ONNX "
                "model; rebuild or re-push the artifact" % (self.model_path, type(exc).__name__, exc)
            ) from exc
        self.inputs = [_tensor_info(i) for i in self._session.get_inputs()]
        self.outputs = [_tensor_info(o) for o in self._session.get_outputs()]
        self._output_list = [o.name for o in self.outputs]

    def _close(self) -> None:
        self._session = None

    def _infer_impl(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self._session.run(self._output_list, feed)

    def facts(self) -> Dict[str, Any]:
        import onnxruntime as ort

        return {
            "name": self.name,
            "version": ort.__version__,
            "providers": list(self._session.get_providers()) if self._session is not None else [],
            "threads": self.config.threads,
            "graph_optimization": self.config.graph_optimization,
        }
