"""Mixed-range concatenations at the outputs: detection heads, found from the calibration statistics.

YOLO-style heads concatenate box coordinates (0..640) with class scores (0..1) into one output tensor. One
int8 grid for both gives the scores a step of 2.5: every score rounds to 0. A Concat whose inputs' observed
ranges differ by more than `factor`, and which reaches a graph output through shape-only ops, is such a
head. The policy says what the QuantSpec does about it, as per-node overrides every target reads:

- "float" (default): the Concat and the ops after it up to the output run in float, and so do the last ops
  of each branch (their outputs lose their quantizer, as nothing quantized reads them). Accurate on every
  target; full-integer targets dequantize before the Concat.
- "branches": each input keeps its own int8 grid, the Concat and what follows run in float on the
  dequantized values (more integer work, box coordinates on their own 8-bit grid).
- "report": found and reported, nothing changed (the output shares one grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from edgekit.calibration.quant_spec import QuantSpec
from edgekit.errors import CalibrationError
from edgekit.onnx_toolbox import consumers

DEFAULT_FACTOR = 16.0
POLICIES = ("float", "branches", "report")
DEFAULT_POLICY = "float"
# Ops that move values without computing: the Concat's grid would travel through them to the output.
# A Concat counts too: YOLOv5 concatenates its per-level (already mixed) heads into one output.
PASS_THROUGH_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat"}


@dataclass
class MixedRangeConcat:
    """One Concat whose inputs need different grids and that reaches graph outputs."""

    node: str
    inputs: list[tuple[str, float, float]]  # (tensor, observed min, observed max)
    outputs: list[str]  # the graph outputs it feeds
    followers: list[str] = field(default_factory=list)  # the pass-through nodes from it to those outputs
    ratio: float = 0.0  # widest input range / narrowest
    action: str = ""

    @property
    def ranges_text(self) -> str:
        """'inputs 0..320 and 0..1' (each input's observed range)."""
        ranges = [f"{_number(lo)}..{_number(hi)}" for _, lo, hi in self.inputs]
        return "inputs " + (", ".join(ranges[:-1]) + " and " + ranges[-1] if len(ranges) > 1 else ranges[0])

    @property
    def reason(self) -> str:
        return f"mixed-range concat: {self.ranges_text}"

    def describe(self) -> str:
        """One line for the quantize report."""
        return (
            f"mixed-range concat {self.node}: {self.ranges_text} (x{self.ratio:.0f}), feeds output "
            f"{', '.join(self.outputs)}; {self.action}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "inputs": [{"tensor": t, "observed": [lo, hi]} for t, lo, hi in self.inputs],
            "outputs": self.outputs,
            "followers": self.followers,
            "ratio": self.ratio,
            "action": self.action,
        }


def _number(value: float) -> str:
    return f"{value:.3g}"


def _extent(lo: float, hi: float) -> float:
    """Width of the grid a range needs (a grid always holds 0)."""
    return max(hi, 0.0) - min(lo, 0.0)


def _input_ranges(node: onnx.NodeProto, spec: QuantSpec) -> list[tuple[str, float, float]]:
    ranges = []
    for name in node.input:
        entry = spec.tensors.get(name)
        seen = (entry.observed or entry.range) if entry is not None else None
        if seen is not None and _extent(*seen) > 0:
            ranges.append((name, float(seen[0]), float(seen[1])))
    return ranges


def _passes_on(reader: onnx.NodeProto, tensor: str) -> bool:
    """Whether `reader` carries `tensor`'s values on unchanged (as data, not as a shape operand)."""
    if reader.op_type == "Concat":
        return True
    return reader.op_type in PASS_THROUGH_OPS and reader.input[0] == tensor


def _paths_to_outputs(
    tensor: str, consumers_of: dict[str, list[onnx.NodeProto]], graph_outputs: set[str], seen: set[str]
) -> tuple[list[str], list[str]]:
    """(pass-through nodes, graph outputs) reachable from `tensor` through pass-through ops only."""
    nodes: list[str] = []
    outputs = [tensor] if tensor in graph_outputs else []
    for reader in consumers_of.get(tensor, []):
        if reader.name in seen or not _passes_on(reader, tensor):
            continue
        seen.add(reader.name)
        later_nodes, later_outputs = _paths_to_outputs(reader.output[0], consumers_of, graph_outputs, seen)
        if later_outputs:
            nodes += [reader.name, *later_nodes]
            outputs += later_outputs
    return nodes, outputs


def find_mixed_range_concats(
    model: onnx.ModelProto, spec: QuantSpec, factor: float = DEFAULT_FACTOR
) -> list[MixedRangeConcat]:
    """Concats with inputs whose observed ranges differ by more than `factor` that feed graph outputs."""
    graph = model.graph
    consumers_of = consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if node.op_type != "Concat" or node.name in spec.float_nodes:
            continue
        ranges = _input_ranges(node, spec)
        if len(ranges) < 2:
            continue
        extents = [_extent(lo, hi) for _, lo, hi in ranges]
        ratio = max(extents) / min(extents)
        if ratio <= factor:
            continue
        followers, outputs = _paths_to_outputs(node.output[0], consumers_of, graph_outputs, set())
        if outputs:
            found.append(MixedRangeConcat(node.name, ranges, sorted(set(outputs)), followers, ratio))
    return found


def apply_policy(
    spec: QuantSpec, found: list[MixedRangeConcat], policy: str = DEFAULT_POLICY, factor: float = DEFAULT_FACTOR
) -> None:
    """Record the findings in `spec.calibration["mixed_range"]` and act on them as per-node overrides."""
    check_policy(policy)
    for concat in found:
        if policy == "report":
            concat.action = "left as is (policy 'report'): the output shares one int8 grid"
            continue
        spec.keep_float(concat.node, concat.reason, inputs_quantized=policy == "branches")
        for name in concat.followers:
            if name not in spec.float_nodes:
                spec.keep_float(name, f"after {concat.node} ({concat.reason})")
        kept = ", ".join([concat.node, *concat.followers])
        concat.action = (
            f"each input on its own int8 grid, kept float from the concat on: {kept}"
            if policy == "branches"
            else f"kept float: {kept}"
        )
    spec.calibration["mixed_range"] = {
        "factor": factor,
        "policy": policy,
        "found": [concat.to_dict() for concat in found],
    }


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise CalibrationError(f"unknown mixed-range policy {policy!r}; choose one of {', '.join(POLICIES)}")


def report_lines(record: dict[str, Any] | None) -> list[str]:
    """One line per mixed-range concat found, from the record `apply_policy` keeps in the QuantSpec's
    `calibration["mixed_range"]` (and the quantize report's `mixed_range`)."""
    lines = []
    for data in (record or {}).get("found", []):
        concat = MixedRangeConcat(
            data["node"],
            [(i["tensor"], *i["observed"]) for i in data["inputs"]],
            data["outputs"],
            data["followers"],
            data["ratio"],
            data["action"],
        )
        lines.append(concat.describe())
    return lines


def spec_lines(spec: QuantSpec) -> list[str]:
    """The report lines of the mixed-range concats a QuantSpec's calibration found (for build manifests)."""
    return report_lines(spec.calibration.get("mixed_range"))
