"""The Model: an ONNX graph plus what travels with it (inputs, outputs, task, preprocessing, class names)."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgekit import preprocess_sources as sources
from edgekit.errors import ModelError
from edgekit.exporter_metadata import read_exporter_metadata
from edgekit.hashing import sha256_bytes
from edgekit.onnx_toolbox import default_opset
from edgekit.preprocess_sources import EDGEKIT_METADATA, GIVEN
from edgekit.runtime.preprocess import PreprocessError, PreprocessSpec
from edgekit.tasks import guess_task, task_config

# Keys under which edgekit stores its metadata inside the ONNX file, so it travels with the model.
PREPROCESS_KEY = "edgekit.preprocess"
CLASS_NAMES_KEY = "edgekit.class_names"
TASK_KEY = "edgekit.task"
EDGEKIT_KEYS = (PREPROCESS_KEY, CLASS_NAMES_KEY, TASK_KEY)

# Where a model's task, class names and preprocessing came from (`Model.task_source` and the others);
# the exporters' own sources are in edgekit.exporter_metadata (e.g. "ultralytics metadata").
GUESSED_FROM_OUTPUTS = "guessed from the outputs"
DEFAULT_FOR_INPUT = "default for the input"  # preprocessing nobody gave: pixels / 255 at the input's size

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, symbolic names or None for unknown) and numpy dtype name of a graph tensor."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    dims: list[Dim] = []
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
    return TensorInfo(value.name, tuple(dims), dtype)


def guess_preprocess(inputs: list[TensorInfo]) -> PreprocessSpec | None:
    """A sensible spec for a single image input (pixels/255, no normalisation), or None."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].dtype not in ("float32", "float16", "uint8"):
        return None
    _, d1, d2, d3 = inputs[0].shape
    if d1 in (1, 3):
        layout, channels, spatial = "NCHW", d1, (d2, d3)
    elif d3 in (1, 3):
        layout, channels, spatial = "NHWC", d3, (d1, d2)
    else:
        return None
    resize = list(spatial) if all(isinstance(v, int) for v in spatial) else None
    scale = 1.0 if inputs[0].dtype == "uint8" else 1.0 / 255.0
    return PreprocessSpec(
        resize=resize, color="GRAY" if channels == 1 else "RGB", scale=scale, layout=layout, dtype=inputs[0].dtype
    )


class Model:
    """An ONNX model checked and ready for the targets, with its I/O, task and preprocessing metadata.

    Build one with `Model.load(path)` or `Model.from_torch(module, example_input)`. `task` (the task config
    of edgekit.tasks, e.g. `{"task": "detect", "conf": 0.25, ...}`; set it to a name or a partial object and
    the defaults are filled), `preprocess` and `class_names` may be set by the user; `save()` writes them into
    the ONNX metadata so they travel. Each is read, in this order, from what the caller gives, edgekit's own
    metadata, an exporter's metadata (Ultralytics, YOLOv5: see edgekit.exporter_metadata) or a guess, and
    `task_source`, `class_names_source` and `preprocess_source` say which (None where there is none).
    `metadata_notes` say what an exporter's metadata held that edgekit could not use.
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        *,
        path: Path | None = None,
        preprocess: PreprocessSpec | dict | None = None,
        class_names: list[str] | None = None,
        task: dict | str | None = None,
        torch_module: Any = None,
        example_input: Any = None,
        name: str | None = None,
    ) -> None:
        self.proto = proto
        self.path = path
        # what reports call the model (the artifact manifest's model_name): the file's stem, a torch module's
        # class, or what the caller says; the graph's own name is an exporter's ("main_graph", "torch_jit")
        self.name: str = name or (Path(path).stem if path else "model")
        # a few of the user's own inputs (set by `edgekit.build` from its calibration data): the probes the
        # build's validation runs the artifact on, when they fit the build shape
        self.validation_feeds: list[dict[str, Any]] | None = None
        self.torch_module = torch_module
        self.example_input = example_input
        initializers = {init.name for init in proto.graph.initializer}
        self.inputs = [_tensor_info(v) for v in proto.graph.input if v.name not in initializers]
        self.outputs = [_tensor_info(v) for v in proto.graph.output]
        metadata = {prop.key: prop.value for prop in proto.metadata_props}
        label = str(path) if path else "the model"
        guessed = guess_preprocess(self.inputs)
        exporter = read_exporter_metadata(
            metadata, self.inputs[0].shape if self.inputs else None, [t.shape for t in self.outputs], guessed
        )
        self.metadata_notes: list[str] = exporter.notes
        self._adopt_preprocess(_as_spec(preprocess), metadata, label, exporter, guessed)
        self._adopt(
            "class_names",
            (class_names, GIVEN),
            (_metadata_json(metadata, CLASS_NAMES_KEY, label), EDGEKIT_METADATA),
            (exporter.class_names, exporter.source),
        )
        self._adopt(
            "task",
            (_as_task(task, "task"), GIVEN),
            (_metadata_task(metadata, label), EDGEKIT_METADATA),
            (exporter.task, exporter.source),
            (guess_task([t.shape for t in self.outputs]), GUESSED_FROM_OUTPUTS),
        )
        self._bytes: bytes | None = None
        self._sha256: str | None = None

    def _adopt_preprocess(
        self, given: PreprocessSpec | None, metadata: dict[str, str], label: str, exporter: Any, guessed: Any
    ) -> None:
        """The preprocessing, key by key in edgekit.preprocess_sources' order (a spec given whole replaces it
        all); `preprocess_sources` says where each key came from, `preprocess_source` the first source used."""
        self.__dict__["_bytes"] = None
        if given is not None:
            self.__dict__.update(preprocess=given, preprocess_source=GIVEN)
            self.__dict__["preprocess_sources"] = dict.fromkeys(given.to_dict(), GIVEN)
            return
        _metadata_preprocess(metadata, label)  # checked whole first: its error names the metadata key
        layers = [
            (_metadata_json(metadata, PREPROCESS_KEY, label), EDGEKIT_METADATA),
            (sources.exporter_keys(exporter.preprocess), exporter.source),
            (sources.input_keys(guessed), sources.FROM_INPUT),
        ]
        try:
            spec, per_key = sources.resolve(layers)
        except PreprocessError as exc:
            raise ModelError(f"{label}: preprocessing from its metadata and its input do not fit: {exc}") from exc
        first = next((source for values, source in layers if values), None)
        self.__dict__.update(preprocess=spec, preprocess_sources=per_key)
        self.__dict__["preprocess_source"] = DEFAULT_FOR_INPUT if first == sources.FROM_INPUT else first

    def override_preprocess(self, values: dict[str, Any]) -> None:
        """Lay `values` (the user's --preprocess) over the preprocessing key by key; every other key keeps its
        value and its source. A bad key or value is a ModelError naming the values it takes."""
        try:
            spec, per_key = sources.override(self.preprocess, self.preprocess_sources, values)
        except PreprocessError as exc:
            raise ModelError(f"--preprocess: {exc}") from exc
        self.__dict__.update(preprocess=spec, preprocess_sources=per_key, preprocess_source=GIVEN, _bytes=None)

    def _adopt(self, name: str, *candidates: tuple[Any, str | None]) -> None:
        """Set `name` to the first candidate value that is not None (empty counts as none), with its source."""
        value, source = next(((v, s) for v, s in candidates if v), (None, None))
        self.__dict__[name] = value
        self.__dict__[f"{name}_source"] = source
        self.__dict__["_bytes"] = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        preprocess: PreprocessSpec | dict | None = None,
        class_names: list[str] | None = None,
        task: dict | str | None = None,
    ) -> Model:
        """Load an ONNX file, check it with the ONNX checker and shape inference. `preprocess`,
        `class_names` and `task` override what the file's metadata says."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist; pass the path of an .onnx file")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or others on bad bytes
            raise ModelError(
                f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); the file may be truncated "
                "or not ONNX at all: export it again"
            ) from exc
        model = cls(proto, path=path, preprocess=_as_spec(preprocess), class_names=class_names, task=task)
        model.check(label=str(path))
        return model

    @classmethod
    def from_torch(
        cls,
        module: Any,
        example_input: Any,
        *,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        dynamic_batch: bool = True,
        opset: int = 17,
        preprocess: PreprocessSpec | dict | None = None,
        class_names: list[str] | None = None,
        task: dict | str | None = None,
    ) -> Model:
        """Export a torch module to ONNX (batch axis dynamic) and keep the module for torch-based targets."""
        try:
            import torch
        except ImportError as exc:
            raise ModelError("Model.from_torch needs PyTorch: pip install 'edgekit[torch]'") from exc
        examples = example_input if isinstance(example_input, tuple) else (example_input,)
        input_names = input_names or (["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))])
        was_training = module.training
        module.eval()
        with torch.no_grad():
            outputs = module(*examples)
        n_outputs = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        output_names = output_names or (["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)])
        dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
        try:
            proto = _export_onnx(module, examples, input_names, output_names, dynamic_axes, opset)
        finally:
            module.train(was_training)
        model = cls(
            proto,
            preprocess=_as_spec(preprocess),
            class_names=class_names,
            task=task,
            torch_module=module,
            example_input=example_input,
            name=type(module).__name__,
        )
        model.check(label=type(module).__name__)
        return model

    # -- checks and metadata --------------------------------------------------------------------

    def check(self, label: str = "the model") -> None:
        """Run the ONNX checker and strict shape inference; raise ModelError naming `label`."""
        if not self.proto.graph.node:
            raise ModelError(f"{label} has an empty graph (no nodes); export the model again")
        if not self.inputs:
            raise ModelError(f"{label} has no graph inputs; a model needs at least one input tensor")
        try:
            onnx.checker.check_model(self.proto)
            onnx.shape_inference.infer_shapes(self.proto, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{label} failed the ONNX checker: {first_line}") from exc

    @property
    def opset(self) -> int:
        return default_opset(self.proto, 0)

    def to_bytes(self) -> bytes:
        """The model serialised with its current task, preprocessing and class names in its metadata (a task
        guessed from the outputs is not written: read again, it is guessed again, and says so)."""
        if self._bytes is None:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
            _set_metadata(proto, PREPROCESS_KEY, self.preprocess.to_json() if self.preprocess else None)
            _set_metadata(proto, CLASS_NAMES_KEY, json.dumps(self.class_names) if self.class_names else None)
            task = self.task if self.task_source != GUESSED_FROM_OUTPUTS else None
            _set_metadata(proto, TASK_KEY, json.dumps(task, sort_keys=True) if task else None)
            self._bytes = proto.SerializeToString()
        return self._bytes

    @property
    def sha256(self) -> str:
        """Hash of the graph and weights (edgekit's own metadata does not count, so saving keeps it)."""
        if self._sha256 is None:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
            for key in EDGEKIT_KEYS:
                _set_metadata(proto, key, None)
            self._sha256 = sha256_bytes(proto.SerializeToString())
        return self._sha256

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("preprocess", "class_names", "task"):
            if name == "preprocess":
                value = _as_spec(value)
                self.__dict__["preprocess_sources"] = dict.fromkeys(value.to_dict(), GIVEN) if value else {}
            elif name == "task":
                value = _as_task(value, "Model.task")
            self.__dict__["_bytes"] = None  # metadata changed: re-serialise on next use
            self.__dict__[f"{name}_source"] = GIVEN if value else None
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in self.inputs)
        outs = ", ".join(f"{t.name}{list(t.shape)}" for t in self.outputs)
        return f"Model({self.path or 'in memory'}: {ins} -> {outs}, opset {self.opset})"


def _as_spec(value: PreprocessSpec | dict | None) -> PreprocessSpec | None:
    if value is None or isinstance(value, PreprocessSpec):
        return value
    try:
        return PreprocessSpec.from_dict(value)
    except (PreprocessError, TypeError) as exc:
        raise ModelError(f"invalid preprocessing spec: {exc}") from exc


def _as_task(value: dict | str | None, where: str) -> dict | None:
    """A task name or (partial) task object as the full task config, checked; a problem is a ModelError."""
    return None if value is None else task_config(value, where=where, error=ModelError)


def _metadata_task(metadata: dict[str, str], label: str) -> dict | None:
    data = _metadata_json(metadata, TASK_KEY, label)
    return None if data is None else _as_task(data, f"{label}: metadata {TASK_KEY!r}")


def _metadata_json(metadata: dict[str, str], key: str, label: str) -> Any:
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{label}: metadata {key!r} is not valid JSON ({exc}); remove or fix it") from exc


def _metadata_preprocess(metadata: dict[str, str], label: str) -> PreprocessSpec | None:
    data = _metadata_json(metadata, PREPROCESS_KEY, label)
    try:
        return _as_spec(data)
    except ModelError as exc:
        raise ModelError(f"{label}: metadata {PREPROCESS_KEY!r}: {exc}") from exc


def _set_metadata(proto: onnx.ModelProto, key: str, value: str | None) -> None:
    kept = [prop for prop in proto.metadata_props if prop.key != key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if value is not None:
        proto.metadata_props.add(key=key, value=value)


def _export_onnx(
    module: Any,
    examples: tuple,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict | None,
    opset: int,
) -> onnx.ModelProto:
    import torch

    buffer = io.BytesIO()
    common = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset)
    # The TorchScript exporter is fast and emits the classic ops (GlobalAveragePool, Flatten) every
    # backend parses; the dynamo exporter is the fallback for modules it cannot trace.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, examples, buffer, dynamo=False, **common)
        except Exception as legacy_error:
            buffer = io.BytesIO()
            try:
                torch.onnx.export(module, examples, buffer, dynamo=True, **common)
            except Exception as exc:
                raise ModelError(
                    f"could not export {type(module).__name__} to ONNX: {legacy_error}; the dynamo exporter also "
                    f"failed: {exc}"
                ) from exc
    return onnx.load_from_string(buffer.getvalue())
