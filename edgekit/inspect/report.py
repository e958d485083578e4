"""What `edgekit inspect` reports: one LayerInfo per node, the Totals and the InspectReport, each with a
JSON-safe `to_dict` (plain ints, strings, lists and dicts, stable keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Dim = int | str
Shape = list[Dim] | None  # None: the rank is unknown

UNKNOWN_DYNAMIC = "unknown: dynamic shape"


@dataclass
class LayerInfo:
    """One graph node: its output shapes, the parameters it reads and its MACs (None when unknown)."""

    index: int
    name: str
    op_type: str
    domain: str
    output_shapes: list[Shape]
    params: int
    macs: int | None
    macs_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": int(self.index),
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "output_shapes": [json_shape(s) for s in self.output_shapes],
            "params": int(self.params),
            "macs": None if self.macs is None else int(self.macs),
            "macs_note": self.macs_note,
        }


@dataclass
class Totals:
    """Sums over the graph; `macs` is None unless every layer's MACs are known (see `macs_known`)."""

    nodes: int
    params: int
    param_bytes: int
    macs: int | None
    macs_known: int
    macs_unknown_layers: int
    op_histogram: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": int(self.nodes),
            "params": int(self.params),
            "param_bytes": int(self.param_bytes),
            "macs": None if self.macs is None else int(self.macs),
            "macs_known": int(self.macs_known),
            "macs_unknown_layers": int(self.macs_unknown_layers),
            "op_histogram": {op: int(n) for op, n in self.op_histogram.items()},
        }


@dataclass
class InspectReport:
    """Everything `edgekit inspect` shows: model facts, layers, totals and unsupported ops per target."""

    path: str | None
    file_size_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocess: dict[str, Any] | None
    input_shapes: dict[str, list[int]]
    macs_input_shapes: dict[str, Shape]
    layers: list[LayerInfo]
    totals: Totals
    unsupported: dict[str, dict[str, int]]
    target_errors: dict[str, str]
    notes: list[str]
    # target (those named with -t) -> every node `build` would refuse: {"op", "node", "reason"}
    refusals: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # target -> accelerator -> ops it hands back to the CPU (e.g. android-tflite -> nnapi -> {"MatMul": 1})
    fallbacks: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    # target -> its detailed accelerator readiness report (rules, sources, nodes), e.g. ios-coreml's ANE report
    accelerator_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    # target (named with -t) -> what its build will change without refusing (jetson-trt: opset 18 -> 17)
    build_notes: dict[str, list[str]] = field(default_factory=dict)
    # where the preprocessing came from ("edgekit metadata", "ultralytics metadata", "given", or "default for
    # the input" when nothing said it); the same for the task and the class names (None: there is none)
    preprocess_source: str | None = None
    # per key: "edgekit metadata", an exporter's source, "the model's input", "given" or "default"
    preprocess_sources: dict[str, str] = field(default_factory=dict)
    task: dict[str, Any] | None = None
    task_source: str | None = None
    class_names: list[str] | None = None
    class_names_source: str | None = None
    # what an exporter's metadata held that edgekit could not use (e.g. an Ultralytics pose task)
    metadata_notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with stable keys (plain ints, strings, lists and dicts only)."""
        return {
            "version": 1,
            "path": self.path,
            "file_size_bytes": int(self.file_size_bytes),
            "ir_version": int(self.ir_version),
            "producer": self.producer,
            "opsets": {domain: int(v) for domain, v in self.opsets.items()},
            "inputs": [_json_io(t) for t in self.inputs],
            "outputs": [_json_io(t) for t in self.outputs],
            "preprocess": self.preprocess,
            "preprocess_source": self.preprocess_source,
            "preprocess_sources": self.preprocess_sources,
            "task": self.task,
            "task_source": self.task_source,
            "class_names": {"count": len(self.class_names or []), "source": self.class_names_source},
            "metadata_notes": list(self.metadata_notes),
            "input_shapes": {name: [int(d) for d in dims] for name, dims in self.input_shapes.items()},
            "macs_input_shapes": {name: json_shape(s) for name, s in self.macs_input_shapes.items()},
            "totals": self.totals.to_dict(),
            "unsupported": {t: {op: int(n) for op, n in ops.items()} for t, ops in self.unsupported.items()},
            "refusals": {t: [dict(r) for r in found] for t, found in self.refusals.items()},
            "target_errors": dict(self.target_errors),
            "fallbacks": {
                t: {a: {op: int(n) for op, n in ops.items()} for a, ops in by.items()}
                for t, by in self.fallbacks.items()
            },
            "accelerator_reports": {
                t: {k: v for k, v in r.items() if k != "lines"} for t, r in self.accelerator_reports.items()
            },
            "notes": list(self.notes),
            "build_notes": {t: list(found) for t, found in self.build_notes.items() if found},
            "layers": [layer.to_dict() for layer in self.layers],
        }


def json_shape(shape: Shape) -> list[int | str] | None:
    """A shape with numpy ints made plain (symbolic dims stay strings; None stays None)."""
    if shape is None:
        return None
    return [d if isinstance(d, str) else int(d) for d in shape]


def _json_io(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"name": tensor["name"], "shape": json_shape(tensor["shape"]), "dtype": tensor["dtype"]}
