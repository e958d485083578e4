"""The Target base class: typed options, one checked `build`, and what the target cannot honour."""

from __future__ import annotations

from collections import Counter
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


class Target:
    """One backend. Subclasses set the class attributes and implement `_build_impl`.

    `build` checks the request once (precision, quantization spec, ops) and writes the manifest; the
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

    # -- what the target can run -----------------------------------------------------------------

    def supported_ops(self) -> set[tuple[str, str]] | None:
        """(domain, op_type) pairs the target runs, or None when it does not restrict ops."""
        return None

    def unsupported_ops(self, proto: onnx.ModelProto) -> dict[str, int]:
        """Ops of `proto` this target cannot run, with how often each occurs."""
        supported = self.supported_ops()
        if supported is None:
            return {}
        counts = Counter(
            node.op_type for node in _all_nodes(proto.graph) if (_domain(node.domain), node.op_type) not in supported
        )
        return dict(sorted(counts.items()))

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
    ) -> Artifact:
        from edgekit.artifact import write_artifact

        if precision not in self.precisions:
            raise TargetError(
                f"target {self.name} does not build precision {precision!r}; it builds: {', '.join(self.precisions)}"
            )
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
        files, extra = self._build_impl(model, precision, quant_spec)
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
