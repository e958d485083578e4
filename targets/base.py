"""The Target base class: typed options, one checked `build`, and what the target cannot honour."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    import onnx

    from edgekit.artifact import Artifact
    from edgekit.model import Model


class TargetError(EdgekitError):
    """An unknown target or an option the target does not support."""


class BuildError(EdgekitError):
    """A model the target cannot turn into an artifact, with the reason and what to do."""


# build options as the CLI spells them, for error messages
OPTION_FLAGS = {
    "dla_core": "--dla",
    "sparsity": "--sparsity",
    "max_batch": "--max-batch",
    "int8_io": "--int8-io",
    "shapes": "--shapes",
}


class Target:
    """One backend. Subclasses set the class attributes and implement `_build_impl`.

    `build` checks the request once (precision, quantization spec, ops) and writes the manifest; the
    subclass only produces its model file(s), like Polygraphy's runner/`*_impl` split.
    """

    _options: ClassVar[dict[str, Any]] = {}  # replaced per build call by check_options' result
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    engine: ClassVar[str] = ""  # the runtime engine the device agent uses for this target's artifacts
    device: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    quantized_precisions: ClassVar[tuple[str, ...]] = ()  # need a QuantSpec (from calibration or QAT)
    activation_scheme: ClassVar[str] = "int8_sym"  # what calibration should produce for this target
    weight_scheme: ClassVar[str] = "int8_per_channel"
    build_options: ClassVar[tuple[str, ...]] = ()  # target-specific `options` keys `build` accepts

    # -- what the target can run -----------------------------------------------------------------

    def supported_ops(self) -> set[tuple[str, str]] | None:
        """(domain, op_type) pairs the target runs, or None when it does not restrict ops."""
        return None

    def unsupported_ops(self, proto: onnx.ModelProto) -> dict[str, int]:
        """Ops of `proto` this target cannot run, with how often each occurs."""
        supported = self.supported_ops()
        if supported is None:
            return {}
        return count_ops(proto, lambda domain, op: (domain, op) not in supported)

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
        }

    # -- build ---------------------------------------------------------------------------------

    def build(
        self,
        model: Model,
        out_dir: str | Path,
        *,
        precision: str = "fp32",
        quant_spec: Any = None,
        options: dict[str, Any] | None = None,
    ) -> Artifact:
        """Build the artifact. `options` are the target's own `build_options` (None values are dropped); a key
        the target does not take is a TargetError naming it; `check_options` validates the values."""
        from edgekit.artifact import write_artifact

        if precision not in self.precisions:
            raise TargetError(
                f"target {self.name} does not build precision {precision!r}; it builds: {', '.join(self.precisions)}"
            )
        options = {key: value for key, value in (options or {}).items() if value is not None}
        unknown = sorted(set(options) - set(self.build_options))
        if unknown:
            named = ", ".join(f"{key} ({OPTION_FLAGS[key]})" if key in OPTION_FLAGS else key for key in unknown)
            takes = f"it takes: {', '.join(self.build_options)}" if self.build_options else "it takes no build options"
            raise TargetError(f"target {self.name} does not take the build option(s) {named}; {takes}")
        if precision in self.quantized_precisions and quant_spec is None:
            raise BuildError(
                f"precision {precision} needs quantization parameters: pass --calib DATA or --spec quant_spec.json"
            )
        if quant_spec is not None:
            quant_spec.check_model(model.sha256, label=str(model.path or "the model"))
        missing = self.unsupported_ops(model.proto)
        if missing:
            listed = ", ".join(f"{op} (x{n})" for op, n in missing.items())
            raise BuildError(f"target {self.name} cannot run these ops of the model: {listed}; see `edgekit inspect`")
        self._options = self.check_options(options, precision)
        try:
            files, extra = self._build_impl(model, precision, quant_spec)
        finally:
            self._options = {}
        manifest = {
            "target": self.name,
            "engine": self.engine,
            "precision": precision,
            "inputs": [self._io_entry(t, model) for t in model.inputs],
            "outputs": [t.to_dict() for t in model.outputs],
            "preprocess": model.preprocess.to_dict() if model.preprocess else None,
            "class_names": model.class_names,
            "source_model_sha256": model.sha256,
            "quant_spec_sha256": getattr(quant_spec, "sha256", None),
            "tools": self.tool_versions(),
            "not_honoured": extra.pop("not_honoured", []),
            **extra,
        }
        return write_artifact(out_dir, files, manifest)

    def check_options(self, options: dict[str, Any], precision: str) -> dict[str, Any]:
        """Validate build options (and fill defaults); `_build_impl` reads the result as `self._options`."""
        return options

    def _build_impl(self, model: Model, precision: str, quant_spec: Any) -> tuple[dict[str, bytes | Path], dict]:
        """Return ({file name: content}, extra manifest fields incl. `model_file`)."""
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


def count_ops(proto: onnx.ModelProto, keep: Callable[[str, str], bool]) -> dict[str, int]:
    """How often each op of `proto` (subgraphs included) occurs, for the (domain, op_type) pairs `keep` accepts."""
    counts = Counter(node.op_type for node in _all_nodes(proto.graph) if keep(_domain(node.domain), node.op_type))
    return dict(sorted(counts.items()))


def _domain(domain: str) -> str:
    return domain or "ai.onnx"


def _all_nodes(graph: onnx.GraphProto):
    """Every node, including those inside If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.HasField("g"):
                yield from _all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_nodes(subgraph)
