"""Neural Engine readiness: the ops and shapes of an ONNX model known to leave the ANE for the GPU or CPU.

Core ML decides per op, when the model loads, where each op runs, and Apple does not publish the rules.
These are the rules found in public sources, each named; they are hints to act on before a device is at
hand, not a verdict. The proof is an Xcode performance report, or `edgekit run` with compute units
CPU_AND_NE against CPU_ONLY on a Mac.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

HOLLANCE = "hollance/neural-engine, docs/unsupported-layers.md (community findings)"
APPLE_TRANSFORMERS = "Apple ML Research, 'Deploying Transformers on the Apple Neural Engine' (2022)"
ANE_GUIDE = "ane-guide.readthedocs.io, part 1 ch. 4 'Capability surface'"
COREMLTOOLS_TYPED = "coremltools docs, 'Typed Execution' (the Neural Engine computes in float16)"

FALLS_BACK = "falls back"  # Core ML runs it on the GPU or CPU, splitting the model around it
SLOWS = "slows"  # runs on the ANE but wastes its bandwidth or memory


@dataclass(frozen=True)
class Rule:
    id: str
    effect: str
    why: str
    source: str
    matches: Callable[[onnx.NodeProto, dict[str, Any]], bool]


@dataclass
class Finding:
    rule: str
    effect: str
    why: str
    source: str
    nodes: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)  # the op type of each of `nodes` ("" for the whole model)

    def to_dict(self) -> dict[str, Any]:
        ops = dict(Counter(t for t in self.op_types if t))
        return {
            "rule": self.rule,
            "effect": self.effect,
            "why": self.why,
            "source": self.source,
            "count": len(self.nodes),
            "ops": ops,
            "nodes": self.nodes[:10],
        }


@dataclass
class AneReport:
    findings: list[Finding]

    @property
    def ready(self) -> bool:
        """No op is known to fall back (ops that only slow the ANE down do not count)."""
        return not any(f.effect == FALLS_BACK for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "findings": [f.to_dict() for f in self.findings]}

    def fallback_ops(self) -> dict[str, int]:
        """Op types known to leave the ANE, with counts (each node once, whichever rules match it)."""
        counts: Counter[str] = Counter()
        seen: set[str] = set()
        for finding in self.findings:
            if finding.effect != FALLS_BACK:
                continue
            for node, op in zip(finding.nodes, finding.op_types, strict=True):
                if op and node not in seen:
                    seen.add(node)
                    counts[op] += 1
        return dict(counts)

    def lines(self) -> list[str]:
        if not self.findings:
            return ["no op or shape is known to leave the Neural Engine"]
        return [f"{f.effect}: {f.rule} x{len(f.nodes)} ({f.why}) [{f.source}]" for f in self.findings]


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _spatial_rank(node: onnx.NodeProto, facts: dict[str, Any]) -> int | None:
    kernel = _attr(node, "kernel_shape")
    if kernel:
        return len(kernel)
    rank = facts["ranks"].get(node.input[0]) if node.input else None
    return rank - 2 if rank else None


def _dilated(node: onnx.NodeProto, facts: dict[str, Any]) -> bool:
    return node.op_type in ("Conv", "ConvTranspose") and any(d > 1 for d in (_attr(node, "dilations") or []))


def _conv3d(node: onnx.NodeProto, facts: dict[str, Any]) -> bool:
    ops = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
    return node.op_type in ops and _spatial_rank(node, facts) == 3


def _gather(node: onnx.NodeProto, facts: dict[str, Any]) -> bool:
    # Gather with constant indices is a slice Core ML folds; with computed indices it is a real gather.
    if node.op_type in ("GatherElements", "GatherND"):
        return True
    return node.op_type == "Gather" and len(node.input) > 1 and node.input[1] not in facts["constants"]


def _rank_above_4(node: onnx.NodeProto, facts: dict[str, Any]) -> bool:
    return any((facts["ranks"].get(name) or 0) > 4 for name in node.output)


def _data_dependent_shape(node: onnx.NodeProto, facts: dict[str, Any]) -> bool:
    if node.op_type in ("NonZero", "NonMaxSuppression", "Unique"):
        return True
    return node.op_type == "TopK" and len(node.input) > 1 and node.input[1] not in facts["constants"]


def _moves_data(node: onnx.NodeProto, facts: dict[str, Any]) -> bool:
    if node.op_type != "Transpose":
        return False
    perm = list(_attr(node, "perm") or [])
    return bool(perm) and perm[-1] != len(perm) - 1  # the innermost axis changes: a real memory shuffle


RULES = (
    Rule(
        "recurrent layer (LSTM/GRU/RNN)",
        FALLS_BACK,
        "recurrent cells have no ANE path",
        f"{HOLLANCE}; {ANE_GUIDE}",
        lambda n, f: n.op_type in ("LSTM", "GRU", "RNN"),
    ),
    Rule("gather with computed indices", FALLS_BACK, "gather is not run on the ANE", HOLLANCE, _gather),
    Rule(
        "dilated convolution",
        FALLS_BACK,
        "dilated convolutions were seen to leave the ANE (newer chips may run them)",
        HOLLANCE,
        _dilated,
    ),
    Rule("3-D convolution or pooling", FALLS_BACK, "fails ANE lowering on every device", ANE_GUIDE, _conv3d),
    Rule(
        "scatter / ReduceProd",
        FALLS_BACK,
        "no ANE path on any family",
        ANE_GUIDE,
        lambda n, f: n.op_type.startswith("Scatter") or n.op_type == "ReduceProd",
    ),
    Rule("sin/cos", FALLS_BACK, "native only from A15 / M2 on", ANE_GUIDE, lambda n, f: n.op_type in ("Sin", "Cos")),
    Rule(
        "data-dependent output shape",
        FALLS_BACK,
        "the ANE runs fixed shapes only; Core ML runs these on the CPU",
        APPLE_TRANSFORMERS,
        _data_dependent_shape,
    ),
    Rule(
        "tensor rank above 4",
        SLOWS,
        "the ANE works on 4-D (B, C, H, W) buffers; higher ranks are reshaped or leave the ANE",
        APPLE_TRANSFORMERS,
        _rank_above_4,
    ),
    Rule(
        "transpose of the innermost axis",
        SLOWS,
        "moves memory; the article's first principle is to keep (B, C, 1, S) layouts and avoid such copies",
        APPLE_TRANSFORMERS,
        _moves_data,
    ),
    Rule(
        "custom-domain op",
        FALLS_BACK,
        "custom layers have only CPU/GPU implementations",
        HOLLANCE,
        lambda n, f: bool(n.domain) and n.domain not in ("ai.onnx",),
    ),
)


def _facts(proto: onnx.ModelProto) -> dict[str, Any]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # a model shape inference cannot read still gets the op-based rules
        inferred = proto
    ranks = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == "Constant" for out in node.output}
    return {"ranks": ranks, "constants": constants}


def ane_report(proto: onnx.ModelProto, precision: str | None = None) -> AneReport:
    """Findings for `proto`: which nodes each rule matches (a rule with no match is left out)."""
    facts = _facts(proto)
    findings = []
    for rule in RULES:
        matched = [node for node in proto.graph.node if rule.matches(node, facts)]
        if matched:
            names = [node.name or node.output[0] for node in matched]
            findings.append(Finding(rule.id, rule.effect, rule.why, rule.source, names, [n.op_type for n in matched]))
    if precision == "fp32":
        findings.append(
            Finding(
                "float32 precision",
                FALLS_BACK,
                "the ANE computes in float16 only; a float32 program runs on the GPU/CPU: build fp16, w8, w4 or w8a8",
                COREMLTOOLS_TYPED,
                ["(whole model)"],
                [""],
            )
        )
    return AneReport(findings)
