"""The OpenVINO engine: an IR (or ONNX) model compiled for a device (CPU by default) with an inference
precision hint and a thread count.

The x86-openvino target writes the hint into the manifest's `build` section (`inference_precision`), which the
agent passes as this engine's default options; the plan's options override it. What OpenVINO actually uses
(the precision it reads back, the devices it runs on, its threads and streams) goes into the result's engine
facts: a CPU without f16 runs an f16 hint at f32, and without a hint a CPU with AMX runs float models in bf16.
The facts are flat (`inference_precision`, `execution_devices`, `threads`, `streams`, `performance_hint`: read back
from the compiled model; `requested_inference_precision`: the option). `openvino` is imported when the engine
loads. Python 3.8-compatible.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import register_engine
from .base import Engine, EngineError, EngineOptions, TensorInfo

_PRECISIONS = ("f32", "f16", "bf16")
_PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass(frozen=True)
class OpenVinoOptions(EngineOptions):
    inference_precision: Optional[str] = field(
        default=None,
        metadata={"help": "INFERENCE_PRECISION_HINT: f32, f16 or bf16; the artifact's build sets it"},
    )
    device: str = field(default="CPU", metadata={"help": "OpenVINO device: CPU, GPU, NPU, AUTO:GPU,CPU, ..."})
    performance_hint: str = field(
        default="LATENCY", metadata={"help": "LATENCY (default), THROUGHPUT or CUMULATIVE_THROUGHPUT"}
    )
    streams: Optional[int] = field(default=None, metadata={"help": "NUM_STREAMS; null: what the hint picks"})

    def check(self) -> None:
        EngineOptions.check(self)
        if self.inference_precision is not None and self.inference_precision not in _PRECISIONS:
            raise EngineError(
                "openvino inference_precision %r: use one of %s" % (self.inference_precision, ", ".join(_PRECISIONS))
            )
        if self.performance_hint not in _PERFORMANCE_HINTS:
            raise EngineError(
                "openvino performance_hint %r: use one of %s" % (self.performance_hint, ", ".join(_PERFORMANCE_HINTS))
            )
        if self.streams is not None and (isinstance(self.streams, bool) or not isinstance(self.streams, int)):
            raise EngineError("openvino streams must be an integer or null, got %r" % (self.streams,))


def _tensor_info(port: Any) -> TensorInfo:
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())  # type: Optional[np.dtype]
    except Exception:  # an element type numpy has no name for
        dtype = None
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return TensorInfo(port.get_any_name(), dtype, shape)


@register_engine("openvino", package="openvino", modules=("openvino",))
class OpenVinoEngine(Engine):
    """OpenVINO Runtime, with the options of `OpenVinoOptions` (threads: INFERENCE_NUM_THREADS)."""

    name = "openvino"
    Options = OpenVinoOptions
    config: OpenVinoOptions

    def __init__(self, model_path: str, options: Optional[Dict[str, Any]] = None) -> None:
        Engine.__init__(self, model_path, options)
        self._compiled: Any = None
        self._request: Any = None

    def compile_config(self) -> Dict[str, Any]:
        """The properties `compile_model` gets."""
        config = self.config
        properties = {"PERFORMANCE_HINT": config.performance_hint}  # type: Dict[str, Any]
        if config.inference_precision is not None:
            properties["INFERENCE_PRECISION_HINT"] = config.inference_precision
        if config.threads is not None:
            properties["INFERENCE_NUM_THREADS"] = config.threads
        if config.streams is not None:
            properties["NUM_STREAMS"] = config.streams
        return properties

    def _load(self) -> None:
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(self.model_path)
        except Exception as exc:  # OpenVINO raises its own GeneralFailure types
            raise EngineError(
                "openvino cannot read model file %s (%s: %s): the file (or its .bin beside it) is corrupt, "
                "truncated or missing; rebuild or re-push the artifact" % (self.model_path, type(exc).__name__, exc)
            ) from exc
        try:
            self._compiled = core.compile_model(model, self.config.device, self.compile_config())
        except Exception as exc:
            raise EngineError(
                "openvino cannot compile %s for device %s with %s (%s: %s): pick another device or precision in "
                "the engine options"
                % (self.model_path, self.config.device, self.compile_config(), type(exc).__name__, exc)
            ) from exc
        self._request = self._compiled.create_infer_request()
        self.inputs = [_tensor_info(port) for port in self._compiled.inputs]
        self.outputs = [_tensor_info(port) for port in self._compiled.outputs]

    def _close(self) -> None:
        self._request = None
        self._compiled = None

    def _infer_impl(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        results = self._request.infer(feed)  # copies the outputs out of the request (share_outputs=False)
        return [results[port] for port in self._compiled.outputs]

    def used(self) -> Dict[str, Any]:
        """What OpenVINO reports the compiled model uses (read back, not what was asked)."""
        used = {}  # type: Dict[str, Any]
        for key, prop in (
            ("inference_precision", "INFERENCE_PRECISION_HINT"),
            ("execution_devices", "EXECUTION_DEVICES"),
            ("threads", "INFERENCE_NUM_THREADS"),
            ("streams", "NUM_STREAMS"),
            ("performance_hint", "PERFORMANCE_HINT"),
        ):
            try:
                value = self._compiled.get_property(prop)
            except Exception:  # a device plugin that does not report this property
                continue
            used[key] = _plain(value)
        return used

    def facts(self) -> Dict[str, Any]:
        """Flat facts (the result's engine facts are one level): what OpenVINO reports it uses, and what was asked
        where it may differ (`requested_inference_precision`)."""
        import openvino as ov

        used = self.used() if self._compiled is not None else {}
        facts = {
            "name": self.name,
            "version": ov.__version__,
            "providers": list(used.get("execution_devices") or [self.config.device]),
            "device": self.config.device,
            "requested_inference_precision": self.config.inference_precision,
        }  # type: Dict[str, Any]
        facts.update(used)
        facts.setdefault("threads", self.config.threads)
        return facts


def _plain(value: Any) -> Any:
    """A property value as JSON: an element type as its short name (f32, bf16), enums and others as text."""
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value).split(".")[-1]
