"""The Target base class and typed build options: one checked `build`, and what the target cannot honour.

Each target declares its build options as a frozen dataclass (a `TargetOptions` subclass): every field has
a type, a default and `metadata={"help": ...}` (optionally `"flag"`, the option's old CLI flag, and
`"example"`, a value as text). Values are converted to the field types when the object is made, so a dict
from Python and the CLI's text (`edgekit build -O dla_core=0`) reach `_build_impl` as the same typed object.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from edgekit.errors import EdgekitError
from edgekit.onnx_toolbox import fixed_input_shape, graph_inputs, node_label
from edgekit.op_support import OpTable, Refusal, refusal_message, refused_op_counts

if TYPE_CHECKING:
    import onnx

    from edgekit.artifact import Artifact
    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model


class TargetError(EdgekitError):
    """An unknown target or an option the target does not support."""


class BuildError(EdgekitError):
    """A model the target cannot turn into an artifact, with the reason and what to do."""


# -- typed build options -----------------------------------------------------------------------------

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null")
_EXAMPLES = {bool: "true", int: "1", float: "0.5", str: "TEXT"}


@dataclass(frozen=True)
class TargetOptions:
    """A target's build options; this base has none (what x86-ort takes).

    Subclasses are frozen dataclasses. Field values are converted to the field types when the object is
    made (text like "0" or "true" is parsed; a bad value is a BuildError naming the option, the expected
    type and an example); `check` then refuses what does not fit the precision being built."""

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            object.__setattr__(self, spec.name, _convert(value, hints[spec.name], type(self), spec.name))

    def check(self, precision: str) -> None:
        """Raise BuildError (naming the option) for a value that does not fit `precision` or the other options."""

    @classmethod
    def label(cls, name: str, value: Any = dataclasses.MISSING) -> str:
        """How a message names option `name`: `-O name=value`, with its old flag when it has one."""
        spelled = f"-O {name}" if value is dataclasses.MISSING else f"-O {name}={as_text(value)}"
        flag = _metadata(cls, name).get("flag")
        return f"{spelled} ({flag})" if flag else spelled

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One entry per option: name, type, default, help and an example value (as `-O` text)."""
        hints = field_types(cls)
        return [
            {
                "name": spec.name,
                "type": type_text(hints[spec.name]),
                "default": spec.default if spec.default is not dataclasses.MISSING else None,
                "help": spec.metadata.get("help", ""),
                "example": example_text(cls, spec.name),
            }
            for spec in dataclasses.fields(cls)
        ]


OptionsT = TypeVar("OptionsT", bound=TargetOptions)


def read_options(
    cls: type[OptionsT], given: Mapping[str, Any] | OptionsT | None, *, owner: str, listed_by: str = ""
) -> OptionsT:
    """`given` as an instance of `cls`: None values are dropped (not given), text is parsed by the field types,
    and a key `cls` does not have is a TargetError naming it and listing the known ones with their help
    (`listed_by`: the command that shows them in full)."""
    if isinstance(given, cls):
        return given
    if isinstance(given, TargetOptions):
        raise TargetError(f"{owner} takes {cls.__name__}, not {type(given).__name__}")
    values = {key: value for key, value in (given or {}).items() if value is not None}
    unknown = sorted(set(values) - {spec.name for spec in dataclasses.fields(cls)})
    if unknown:
        see = f" (see `{listed_by}`)" if listed_by and dataclasses.fields(cls) else ""
        raise TargetError(f"{owner} does not take the build option(s) {', '.join(unknown)}; {known_options(cls)}{see}")
    return cls(**values)


def options_from_text(cls: type[TargetOptions], items: Mapping[str, str], *, owner: str) -> dict[str, Any]:
    """Typed values of `-O KEY=VALUE` text by the field types of `cls`:
    {"dla_core": "0", "int8_io": "true", "shapes": "256x256,320x320"} -> {"dla_core": 0, "int8_io": True,
    "shapes": ((256, 256), (320, 320))}. Bools read true/false (1/0, yes/no, on/off), an optional option
    reads none as None, tuples are comma-separated with HxW items inside."""
    parsed = read_options(cls, items, owner=owner)
    return {key: getattr(parsed, key) for key in items}


def known_options(cls: type[TargetOptions]) -> str:
    """'it takes: name [help], ...' or 'it takes no build options'."""
    described = cls.describe()
    if not described:
        return "it takes no build options"
    return "it takes: " + ", ".join(f"{o['name']} [{o['help']}]" for o in described)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field (targets write `int | None` under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    return next(spec.metadata for spec in dataclasses.fields(cls) if spec.name == name)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def _tuple_items(hint: Any) -> tuple[Any, ...] | None:
    """The item types of a tuple hint, with a trailing Ellipsis for tuple[X, ...]; None for other types."""
    return typing.get_args(hint) if typing.get_origin(hint) is tuple else None


def type_text(hint: Any) -> str:
    """A field type as `edgekit targets --options` shows it: int, bool, list of int x int, ..."""
    inner, optional = _optional(hint)
    items = _tuple_items(inner)
    if items is not None and items[-1] is Ellipsis:
        text = f"list of {type_text(items[0])}"
    elif items is not None:
        text = " x ".join(type_text(item) for item in items)
    else:
        text = getattr(inner, "__name__", str(inner))
    return f"{text} or none" if optional else text


def example_text(cls: type, name: str) -> str:
    example = _metadata(cls, name).get("example")
    return example if example is not None else _example_of(_optional(field_types(cls)[name])[0])


def _example_of(hint: Any, nested: bool = False) -> str:
    items = _tuple_items(hint)
    if items is None:
        return _EXAMPLES.get(hint, "VALUE")
    if items[-1] is Ellipsis:
        return ",".join([_example_of(items[0], nested=True)] * 2)
    return ("x" if nested else ",").join(_example_of(item, nested=True) for item in items)


def as_text(value: Any, nested: bool = False) -> str:
    """A value as `-O` text: true/false, none, 256x256,320x320."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ("x" if nested else ",").join(as_text(item, nested=True) for item in value)
    return str(value)


def _convert(value: Any, hint: Any, cls: type[TargetOptions], name: str) -> Any:
    """`value` (Python or `-O` text) as type `hint`; BuildError naming the option when it is not one."""
    try:
        return _as_type(value, hint)
    except (TypeError, ValueError):
        pass
    raise BuildError(
        f"{cls.label(name, value)}: expected {type_text(hint)}, got {value!r}; e.g. -O {name}={example_text(cls, name)}"
    )


def _as_type(value: Any, hint: Any, nested: bool = False) -> Any:
    """Raise TypeError/ValueError when `value` is not (and does not read as) `hint`."""
    inner, optional = _optional(hint)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise TypeError("None for a required value")
    items = _tuple_items(inner)
    if items is not None:
        return _as_tuple(value, items, nested)
    if isinstance(value, str) and inner is not str:
        return _from_text(value.strip(), inner)
    if inner is bool and isinstance(value, bool):
        return value
    if inner is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if inner is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if inner is str and isinstance(value, str):
        return value
    raise TypeError(f"not a {type_text(inner)}")


def _as_tuple(value: Any, items: tuple[Any, ...], nested: bool) -> tuple[Any, ...]:
    if isinstance(value, str):
        value = [part for part in value.split("x" if nested else ",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise TypeError("not a sequence")
    if items[-1] is Ellipsis:
        return tuple(_as_type(item, items[0], nested=True) for item in value)
    if len(value) != len(items):
        raise ValueError(f"{len(value)} items, not {len(items)}")
    return tuple(_as_type(item, hint, nested=True) for item, hint in zip(value, items, strict=True))


def _from_text(text: str, hint: Any) -> Any:
    if hint is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{text!r} is not true or false")
    if hint in (int, float):
        return hint(text)
    raise TypeError(f"cannot read {hint} from text")


# -- the target ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildAt:
    """What a target's refusals may depend on besides the graph: the precision, the input (height, width) the
    artifact is built for (`build_size`: targets that convert at a fixed shape) and the checked build options
    (jetson-trt's `trt_version`); None: not known, the defaults."""

    precision: str | None = None
    size: tuple[int, int] | None = None
    options: TargetOptions | None = None


DEFAULTS = BuildAt()


class Target:
    """One backend. Subclasses set the class attributes (`Options`: the build options dataclass) and implement
    `_build_impl`.

    `build` checks the request once (precision, options, quantization spec, ops) and writes the manifest; the
    subclass only produces its model file(s), like Polygraphy's runner/`*_impl` split.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    engine: ClassVar[str] = ""  # the runtime engine the device agent uses for this target's artifacts
    device: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    quantized_precisions: ClassVar[tuple[str, ...]] = ()  # need a QuantSpec (from calibration or QAT)
    activation_scheme: ClassVar[str] = "int8_sym"  # what calibration should produce for this target
    weight_scheme: ClassVar[str] = "int8_per_channel"
    Options: ClassVar[type[TargetOptions]] = TargetOptions  # the build options `build(options=...)` takes

    # -- what the target can run -----------------------------------------------------------------

    def supported_ops(self) -> set[tuple[str, str]] | None:
        """(domain, op_type) pairs the target runs, or None when it does not restrict ops."""
        return None

    def refusals(self, proto: onnx.ModelProto, at: BuildAt = DEFAULTS) -> list[Refusal]:
        """Every node of `proto` this target cannot build, naming op, node and reason (what `build` refuses
        before writing anything and `edgekit inspect -t` predicts), for the build `at` (precision, input size,
        options). By default: ops outside `supported_ops`."""
        supported = self.supported_ops()
        if supported is None:
            return []
        where = f"{self.engine or self.name}'s operator list"
        return [
            Refusal(node.op_type, node_label(node), f"not in {where}")
            for node in all_nodes(proto.graph)
            if (_domain(node.domain), node.op_type) not in supported
        ]

    def model_refusals(
        self, model: Model, precision: str | None, options: TargetOptions | None = None
    ) -> list[Refusal]:
        """What `build` refuses for this model, precision and checked `options` (None: the defaults); a target
        whose route skips the ONNX graph, such as a torch module converted directly, overrides this."""
        return self.refusals(model.proto, BuildAt(precision, build_size(model), options))

    def build_notes(self, proto: onnx.ModelProto, options: TargetOptions | None = None) -> list[str]:
        """What a build with `options` will change about this model without refusing it (inspect prints them);
        none by default."""
        return []

    def latency_check(self, model: Model, artifact: Artifact) -> dict[str, Any] | None:
        """A quantized artifact's latency against the FP32 model on this machine, where its engine runs here (the
        CLI prints it, loudly when INT8 is slower); None elsewhere."""
        return None

    def timed_model(self, float_model: onnx.ModelProto, spec: QuantSpec) -> onnx.ModelProto | None:
        """The ONNX model this target ships for `spec`, when ONNX Runtime on this machine runs it as the device
        does (the latency plan times it); None for targets whose engine does not run here."""
        return None

    def calibration_schemes(self, options: TargetOptions | None = None) -> tuple[str, str]:
        """(activation scheme, weight scheme) calibration should produce for this target built with `options`."""
        return self.activation_scheme, self.weight_scheme

    def check_buildable(self, model: Model, precision: str, options: TargetOptions | None = None) -> None:
        """BuildError naming every node this target would refuse (the API calls it before calibrating too)."""
        refused = self.model_refusals(model, precision, options)
        if refused:
            advice = (
                f"`edgekit inspect MODEL -t {self.name}` lists them; export the model without them or pick another "
                "target"
            )
            raise BuildError(refusal_message(f"target {self.name}", refused, advice))

    def unsupported_ops(self, proto: onnx.ModelProto, *, size: tuple[int, int] | None = None) -> dict[str, int]:
        """Ops of `proto` this target cannot run, with how often each occurs."""
        return refused_op_counts(self.refusals(proto, BuildAt(size=size)))

    def accelerator_fallbacks(self, proto: onnx.ModelProto) -> dict[str, dict[str, int]]:
        """Per accelerator of the device (NNAPI, ANE, DLA): ops of `proto` it hands back to the CPU, with counts.
        The model still runs; those layers are just not accelerated. Empty when the target knows of none."""
        return {}

    def accelerator_report(self, proto: onnx.ModelProto) -> dict[str, Any] | None:
        """A detailed readiness report for the device's accelerator (rules, their sources, matched nodes), with
        `lines` to print; None when the target has none beyond `accelerator_fallbacks`."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "device": self.device,
            "engine": self.engine,
            "precisions": list(self.precisions),
            "quantized_precisions": list(self.quantized_precisions),
            "activation_scheme": self.activation_scheme if self.quantized_precisions else None,
            "weight_scheme": self.weight_scheme if self.quantized_precisions else None,
            "options": self.Options.describe(),
        }

    # -- build ---------------------------------------------------------------------------------

    def make_options(self, given: Mapping[str, Any] | TargetOptions | None, precision: str) -> TargetOptions:
        """`given` as this target's checked Options for a `precision` build (see `read_options`); the API calls
        this before calibrating, so a bad option fails fast."""
        options = read_options(
            self.Options, given, owner=f"target {self.name}", listed_by=f"edgekit targets --options {self.name}"
        )
        options.check(precision)
        return options

    def build(
        self,
        model: Model,
        out_dir: str | Path,
        *,
        precision: str = "fp32",
        quant_spec: QuantSpec | None = None,
        options: Mapping[str, Any] | TargetOptions | None = None,
    ) -> Artifact:
        """Build the artifact. `options` are this target's `Options` (or a dict of them, None values dropped,
        text parsed by the field types); a key the target does not take is a TargetError naming it."""
        from edgekit.artifact import write_artifact

        if precision not in self.precisions:
            raise TargetError(
                f"target {self.name} does not build precision {precision!r}; it builds: {', '.join(self.precisions)}"
            )
        checked = self.make_options(options, precision)
        if precision in self.quantized_precisions and quant_spec is None:
            raise BuildError(
                f"precision {precision} needs quantization parameters: pass --calib DATA or --spec quant_spec.json"
            )
        if quant_spec is not None:
            quant_spec.check_model(model.sha256, label=str(model.path or "the model"))
        self.check_buildable(model, precision, checked)
        files, extra = self._build_impl(model, precision, quant_spec, checked)
        manifest = {
            "model_name": model.name,  # so a report row says which model, not just an artifact hash
            "target": self.name,
            "engine": self.engine,
            "precision": precision,
            "inputs": [self._io_entry(t, model) for t in model.inputs],
            "outputs": [t.to_dict() for t in model.outputs],
            "preprocess": model.preprocess.to_dict() if model.preprocess else None,
            "class_names": model.class_names,
            "task": model.task,
            "source_model_sha256": model.sha256,
            "quant_spec_sha256": getattr(quant_spec, "sha256", None),
            "tools": self.tool_versions(),
            "not_honoured": extra.pop("not_honoured", []),
            **extra,
        }
        return write_artifact(out_dir, files, manifest)

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: TargetOptions
    ) -> tuple[dict[str, bytes | Path], dict]:
        """Return ({file name: content}, extra manifest fields incl. `model_file`). `spec` is set for the
        quantized precisions; `options` are this target's checked `Options`."""
        raise NotImplementedError

    def tool_versions(self) -> dict[str, str]:
        import onnx

        import edgekit

        return {"edgekit": edgekit.__version__, "onnx": onnx.__version__}

    @staticmethod
    def _io_entry(tensor: Any, model: Model) -> dict[str, Any]:
        entry = tensor.to_dict()
        if model.preprocess is not None and len(tensor.shape) == 4:
            entry["layout"] = model.preprocess.layout
        return entry


def build_size(model: Model) -> tuple[int, int] | None:
    """The input (height, width) a device artifact of `model` is built for: what every frame becomes after the
    preprocessing (crop, stretch or letterbox), else its resize; None without a preprocessing spec."""
    preprocess = model.preprocess
    if preprocess is None:
        return None
    size = preprocess.fixed_input_size or preprocess.resize
    return (int(size[0]), int(size[1])) if size else None


def translator_refusals(
    proto: onnx.ModelProto,
    size: tuple[int, int] | None,
    table: OpTable,
    *,
    check_input: Callable[[onnx.ModelProto], Any] | None = None,
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
) -> list[Refusal]:
    """What one of our translators (its op `table`) refuses of `proto` at its build shape, shape arithmetic
    folded: the input itself when it cannot be fixed (or `check_input` raises), else every node it cannot take
    after its own `rewrite` (the TFLite translator fuses GELU first)."""
    try:
        static, _ = static_model(proto, size)
        if check_input is not None:
            check_input(static)
    except EdgekitError as exc:
        return [input_refusal(proto, str(exc))]
    return table.refusals(rewrite(static) if rewrite is not None else static)


def input_refusal(proto: onnx.ModelProto, reason: str) -> Refusal:
    """A refusal of the model's input itself (a free axis, a layout the target cannot take)."""
    inputs = graph_inputs(proto)
    return Refusal("input", inputs[0].name if inputs else "?", reason)


def static_model(
    proto: onnx.ModelProto, size: tuple[int, int] | None, layout: str | None = None
) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """`proto` at the one input shape a converted artifact has (batch 1, free height/width from `size`) with its
    shape arithmetic folded (edgekit.onnx_fold), and that shape; ModelError when a free axis cannot be fixed."""
    from edgekit.onnx_fold import fold_at_shape

    shape = fixed_input_shape(proto, size, layout=layout)
    return fold_at_shape(proto, shape), shape


def count_ops(proto: onnx.ModelProto, keep: Callable[[str, str], bool]) -> dict[str, int]:
    """How often each op of `proto` (subgraphs included) occurs, for the (domain, op_type) pairs `keep` accepts."""
    counts = Counter(node.op_type for node in all_nodes(proto.graph) if keep(_domain(node.domain), node.op_type))
    return dict(sorted(counts.items()))


def _domain(domain: str) -> str:
    return domain or "ai.onnx"


def all_nodes(graph: onnx.GraphProto):
    """Every node, including those inside If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.HasField("g"):
                yield from all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_nodes(subgraph)
