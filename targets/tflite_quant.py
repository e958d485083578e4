"""Full-integer INT8 .tflite whose activation ranges come from the core's QuantSpec, not a converter's min-max.

1. Map: run the prepared float ONNX model (ONNX Runtime, every float intermediate exposed) and the float
   .tflite (every tensor preserved) on one probe input, and pair each TFLite activation with the ONNX tensor
   holding the same values (NHWC -> NCHW). TensorFlow's converter renames everything, so names cannot be
   used. A tensor the converter created by folding an affine op into a conv (a HardSigmoid's a*x+b) is an
   affine image a*t+b of an ONNX tensor: its range is the image of the spec's range. PAD/RESHAPE/TRANSPOSE
   outputs take their input's parameters (TFLite requires it).
2. Quantize with ai-edge-quantizer (static int8 activations, per-channel int8 weights computed from the
   weights, int32 biases), handing it min/max chosen so that its (scale, zero point) are the spec's exactly:
   min = (-128 - zp) * scale, max = (127 - zp) * scale. uint8 specs (x86) become int8 with zp - 128, int8
   symmetric specs (TensorRT) keep zp 0: the same grid either way.
   The ops of the QuantSpec's float nodes (a detection head's concat and what follows it) are left float:
   the quantizer dequantizes their inputs, each on its own grid, so the model is int8 up to them.
3. Read the parameters back from the produced model and list every activation whose parameters differ
   (TFLite fixes some, e.g. softmax outputs at 1/256) as not honoured.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgekit.errors import EdgekitError
from edgekit.targets.onnx_to_tf_ops import FLOAT_SCOPE

if TYPE_CHECKING:
    from edgekit.calibration.quant_spec import QuantSpec

# TFLite ops whose outputs must carry their input's quantization parameters (the kernels move values, never
# compute new ones), and where the data input is when it is not the first (SPLIT: axis, then data)
_SAME_PARAMS_OPS = {
    "PAD",
    "PADV2",  # max pooling's pads (filled with the lowest float): its input's range
    "RESHAPE",
    "TRANSPOSE",
    "SQUEEZE",
    "MAX_POOL_2D",
    "RESIZE_NEAREST_NEIGHBOR",
    "SPLIT",
    "STRIDED_SLICE",
    "SLICE",
}
_DATA_INPUT = {"SPLIT": 1}
_PERMUTING_OPS = {"RESHAPE", "TRANSPOSE", "SQUEEZE"}  # the output holds exactly the input's values
_EXACT_TOLERANCE = 1e-4  # relative max error for "the same tensor" (float32 arithmetic in two runtimes)
# a second, looser pass for tensors nothing matched exactly: TFLite's float LOGISTIC and GELU kernels are
# approximations (about 1.4e-4 of the range off ONNX Runtime's sigmoid)
_CLOSE_TOLERANCE = 1e-3


class TfliteQuantError(EdgekitError):
    """The QuantSpec cannot be carried onto the TFLite graph (an activation without a range)."""


@dataclass
class Mapping:
    """How one TFLite activation gets its range: from ONNX tensor `onnx_name` as a*t + b."""

    onnx_name: str
    a: float = 1.0
    b: float = 0.0
    via: str = "same values"


@dataclass
class QuantizedTflite:
    data: bytes
    mapping: dict[str, Mapping]
    expected: dict[str, tuple[float, int]]  # tflite tensor -> (scale, int8 zero point) from the spec
    not_honoured: list[dict[str, str]] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)  # TFLite tensors whose ops stay float (spec float nodes)


def _interpreter(data: bytes, preserve: bool = False) -> Any:
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": that is what it is used for here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(
            model_content=data,
            experimental_preserve_all_tensors=preserve,
            # without XNNPACK every op output stays readable
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    interpreter.allocate_tensors()
    return interpreter


def _onnx_activations(proto: onnx.ModelProto, probe: np.ndarray) -> dict[str, np.ndarray]:
    from edgekit.calibration.graph import session_with_outputs

    inferred = onnx.shape_inference.infer_shapes(proto)
    produced = {name for node in inferred.graph.node for name in node.output}  # not initializers or inputs
    floats = [
        info.name
        for info in inferred.graph.value_info
        if info.name in produced and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ]
    session = session_with_outputs(proto, floats)
    name = session.get_inputs()[0].name
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: probe}), strict=True))
    values[name] = probe
    return values


def _tflite_activations(interpreter: Any, probe_nhwc: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Float activations of the float model (op outputs and the input), and each output's producing op."""
    details = interpreter.get_tensor_details()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], probe_nhwc)
    interpreter.invoke()
    produced_by: dict[str, str] = {}
    values: dict[str, np.ndarray] = {}
    for op in interpreter._get_ops_details():  # the documented way to list ops is the analyzer, text only
        for index in op["outputs"]:
            name = details[index]["name"]
            produced_by[name] = op["op_name"]
            values[name] = np.array(interpreter.get_tensor(index))
    first = interpreter.get_input_details()[0]
    values[first["name"]] = probe_nhwc
    produced_by[first["name"]] = "INPUT"
    return {k: v for k, v in values.items() if v.dtype == np.float32}, produced_by


def _canonical(value: np.ndarray) -> np.ndarray:
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value


def map_activations(
    proto: onnx.ModelProto,
    float_tflite: bytes,
    probe: np.ndarray,
    *,
    nchw_input: bool = False,
    prefer: Collection[str] = (),
) -> tuple[dict[str, Mapping], list[str], Any]:
    """Pair TFLite activations with ONNX tensors; returns (mapping, unmapped tflite names, the interpreter).
    Where several ONNX tensors hold the same values (an Identity's input and output), one in `prefer` (the
    QuantSpec's tensors) is taken."""
    onnx_values = _onnx_activations(proto, probe)
    interpreter = _interpreter(float_tflite, preserve=True)
    tfl_values, produced_by = _tflite_activations(interpreter, probe if nchw_input else probe.transpose(0, 2, 3, 1))
    by_size: dict[int, list[str]] = {}
    for name in sorted(onnx_values, key=lambda n: n not in prefer):
        by_size.setdefault(onnx_values[name].size, []).append(name)
    mapping: dict[str, Mapping] = {}
    unmapped = []
    for name, value in tfl_values.items():
        as_is = produced_by.get(name) == "INPUT" and nchw_input
        layouts = [value] if as_is or value.ndim != 4 else [_canonical(value), value]  # NHWC, or NCHW already
        found = None
        for laid_out in layouts:
            flat = laid_out.reshape(-1)
            found = found or _match(flat, onnx_values, by_size.get(flat.size, []))
        if found is not None:
            mapping[name] = found
        else:
            unmapped.append(name)
    # PAD/RESHAPE/... outputs share their input's parameters (walk in graph order so chains resolve)
    for op, source, out in same_params_edges(interpreter):
        if out in unmapped and source in mapping:
            inherited = mapping[source]
            mapping[out] = Mapping(inherited.onnx_name, inherited.a, inherited.b, f"input of {op}")
            unmapped.remove(out)
    return mapping, unmapped, interpreter


def same_params_edges(interpreter: Any) -> list[tuple[str, str, str]]:
    """(op name, input tensor, output tensor) of every op whose output must take its input's parameters, in
    graph order."""
    details = interpreter.get_tensor_details()
    edges = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in _SAME_PARAMS_OPS:
            source = details[op["inputs"][_DATA_INPUT.get(op["op_name"], 0)]]["name"]
            edges += [(op["op_name"], source, details[index]["name"]) for index in op["outputs"]]
    return edges


def _match(flat: np.ndarray, onnx_values: dict[str, np.ndarray], candidates: list[str]) -> Mapping | None:
    scale = float(np.abs(flat).max()) + 1e-12
    for tolerance in (_EXACT_TOLERANCE, _CLOSE_TOLERANCE):
        for name in candidates:
            other = onnx_values[name].reshape(-1)
            if other.size == flat.size and float(np.abs(other - flat).max()) / scale < tolerance:
                return Mapping(name, via="same values" if tolerance == _EXACT_TOLERANCE else "close values")
    for name in candidates:  # an affine image a*t + b (a converter-folded scale and shift)
        other = onnx_values[name].reshape(-1).astype(np.float64)
        if other.size != flat.size or other.std() == 0:
            continue
        a, b = np.polyfit(other, flat.astype(np.float64), 1)
        if a > 0 and float(np.abs(a * other + b - flat).max()) / scale < _EXACT_TOLERANCE:
            return Mapping(name, float(a), float(b), "affine image")
    return None


def int8_grid(entry: Any) -> tuple[float, int]:
    """(scale, int8 zero point) of a spec activation entry: uint8 asymmetric shifts its zero point by -128."""
    scale, zero_point = float(entry.scale), int(entry.zero_point)
    if entry.dtype == "uint8":
        zero_point -= 128
    return scale, zero_point


def _min_max(scale: float, zero_point: int) -> dict[str, np.ndarray]:
    low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
    return {"min": np.array(low, np.float32), "max": np.array(high, np.float32)}


def quantize_full_integer(
    float_tflite: bytes,
    proto: onnx.ModelProto,
    spec: QuantSpec,
    probe: np.ndarray,
    *,
    int8_io: bool,
    nchw_input: bool = False,
) -> QuantizedTflite:
    """The full-integer model: activations on the spec's grids, int8 (or float, `int8_io=False`) input/output."""
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    mapping, unmapped, interpreter = map_activations(
        proto, float_tflite, probe, nchw_input=nchw_input, prefer=set(spec.tensors)
    )
    ranges, expected, lacking = spec_ranges(interpreter, mapping, unmapped, spec)
    island = float_island_ops(interpreter)
    internal = island_internal_tensors(interpreter)
    lacking = {name: why for name, why in lacking.items() if name not in internal}
    unranged = unranged_ops(interpreter, lacking)
    if any(name in lacking for name in _edge_tensors(interpreter)):
        described = sorted(f"{name} ({why})" for name, why in lacking.items())
        raise TfliteQuantError(
            "these TFLite activations have no range in the QuantSpec: "
            + "; ".join(described[:8])
            + (f" and {len(described) - 8} more" if len(described) > 8 else "")
            + ". Calibrate this exact model (edgekit build --calib DATA) so every tensor has a range"
        )
    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "float.tflite"), os.path.join(tmp, "int8.tflite")
        with open(source, "wb") as handle:
            handle.write(float_tflite)
        q = quantizer.Quantizer(source)
        if int8_io:
            q.load_quantization_recipe(recipe.static_wi8_ai8())
        else:  # every op type but the graph's INPUT/OUTPUT: QUANTIZE/DEQUANTIZE at the edges
            known = {member.value for member in qtyping.TFLOperationName}
            for op_name in sorted({op["op_name"] for op in interpreter._get_ops_details()} & known):
                q.add_static_config(
                    regex=".*",
                    operation_name=qtyping.TFLOperationName(op_name),
                    activation_num_bits=8,
                    weight_num_bits=8,
                )
        divisions = activation_divisions(interpreter)
        kept_float = float_ops(interpreter, mapping, proto, spec) + island + unranged + divisions
        for scope in kept_float:
            q.update_quantization_recipe(
                regex=scope_regex(scope),
                operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                algorithm_key=AlgorithmName.NO_QUANTIZE,
            )
        try:
            q.quantize(ranges, enable_progress_report=False).export_model(target, overwrite=True)
        except (ValueError, KeyError, RuntimeError) as exc:  # ai-edge-quantizer's own limits, named
            said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TfliteQuantError(
                f"ai-edge-quantizer could not quantize this model: {said[:300]}; build fp16 for android-tflite, or "
                "int8 for another target"
            ) from exc
        with open(target, "rb") as handle:
            data = handle.read()
    result = QuantizedTflite(data, mapping, expected, kept_float=kept_float)
    result.not_honoured = check_parameters(result) + island_notes(island) + unranged_notes(unranged, lacking)
    if divisions:
        result.not_honoured.append(
            {
                "what": f"{len(divisions)} divisions by an activation computed in float",
                "why": "TFLite's int8 DIV stops the interpreter when a divisor rounds to its zero point",
            }
        )
    return result


def unranged_ops(interpreter: Any, lacking: dict[str, str]) -> list[str]:
    """The TFLite ops, by first output, that make or read an activation the QuantSpec has no range for (the
    statistics of a LayerNorm the ONNX graph spells out in ReduceMean/Sub/Pow: float in the QDQ model too,
    never observed): they stay float, their ranged inputs dequantized and their ranged outputs quantized."""
    if not lacking:
        return []
    details = interpreter.get_tensor_details()
    kept = []
    for op in interpreter._get_ops_details():
        touched = [details[i]["name"] for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        if any(name in lacking for name in touched):
            kept.append(details[op["outputs"][0]]["name"])
    return kept


def unranged_notes(unranged: list[str], lacking: dict[str, str]) -> list[dict[str, str]]:
    if not unranged:
        return []
    shown = ", ".join(sorted(lacking)[:6]) + (f" and {len(lacking) - 6} more" if len(lacking) > 6 else "")
    return [
        {
            "what": f"{len(unranged)} TFLite ops computed in float",
            "why": f"the QuantSpec has no range for the activations they make or read ({shown}): the QDQ model "
            "keeps those float too; their inputs are dequantized and their outputs quantized on the spec's grids",
        }
    ]


def _edge_tensors(interpreter: Any) -> set[str]:
    """The model's input and output tensors (an int8 edge needs a range: it cannot be left float)."""
    return {d["name"] for d in (*interpreter.get_input_details(), *interpreter.get_output_details())}


def spec_ranges(
    interpreter: Any, mapping: dict[str, Mapping], unmapped: list[str], spec: QuantSpec
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[float, int]], dict[str, str]]:
    """The quantizer's min/max per TFLite activation from the spec, the (scale, zero point) each should get, and
    the activations without a range (name -> why). An output of a same-params op (SPLIT, STRIDED_SLICE, ...)
    whose ONNX tensor the calibration did not observe (it feeds no quantized ONNX op) takes its input's range:
    TFLite would give it its input's parameters anyway; the input of a RESHAPE/TRANSPOSE takes its output's
    range (the same values), as YOLOv8's DFL softmax before the transpose that feeds its conv."""
    activations = {n: e for n, e in spec.tensors.items() if e.kind in ("activation", "output")}
    expected: dict[str, tuple[float, int]] = {}
    ranges: dict[str, dict[str, np.ndarray]] = {}
    lacking = {n: "no ONNX tensor has its values" for n in unmapped}
    for tfl_name, m in mapping.items():
        entry = activations.get(m.onnx_name)
        if entry is None:
            lacking[tfl_name] = f"= ONNX {m.onnx_name}, not in the QuantSpec"
            continue
        scale, zero_point = int8_grid(entry)
        grid = _min_max(scale, zero_point)
        if m.via == "affine image":
            lo, hi = (m.a * float(grid["min"]) + m.b, m.a * float(grid["max"]) + m.b)
            lo, hi = min(lo, 0.0), max(hi, 0.0)  # an int8 grid holds zero (relu6(x + 3) of a HardSigmoid does not)
            scale = (hi - lo) / 255.0
            zero_point = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
            grid = _min_max(scale, zero_point)
        ranges[tfl_name] = grid
        expected[tfl_name] = (scale, zero_point)
    edges = same_params_edges(interpreter)
    readers = reader_counts(interpreter)
    for op, source, out in reversed(edges):  # a transposed tensor's range is its source's range too, and so
        # is a sliced one's where the slice is all that reads it (a ViT's class token of the final norm)
        if (op in _PERMUTING_OPS or readers.get(source) == 1) and source in lacking and out in ranges:
            ranges[source], expected[source] = ranges[out], expected[out]
            del lacking[source]
    for _, source, out in edges:
        if out in lacking and source in ranges:
            ranges[out], expected[out] = ranges[source], expected[source]
            del lacking[out]
    for source, out in clipping_inputs(interpreter):  # a tensor only a RELU reads: the RELU's range clips it so
        if source in lacking and out in ranges:
            ranges[source], expected[source] = ranges[out], expected[out]
            del lacking[source]
    for source, out in concat_inputs(interpreter):  # a grouped conv's per-group outputs: the concat's range
        if source in lacking and out in ranges:
            ranges[source], expected[source] = ranges[out], expected[out]
            del lacking[source]
    return ranges, expected, lacking


_CLIPPING_OPS = {"RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1"}


def clipping_inputs(interpreter: Any) -> list[tuple[str, str]]:
    """(input, output) of every RELU-like op whose input nothing else reads, in reverse graph order: the ONNX
    model fuses a conv and its Relu (the QuantSpec has only the Relu's output) where TFLite computes the conv
    apart (a grouped conv's concatenation before the RELU); quantizing the input on the output's grid clips
    exactly as the op does."""
    details = interpreter.get_tensor_details()
    readers = reader_counts(interpreter)
    pairs = [
        (details[op["inputs"][0]]["name"], details[op["outputs"][0]]["name"])
        for op in reversed(interpreter._get_ops_details())
        if op["op_name"] in _CLIPPING_OPS
    ]
    return [(source, out) for source, out in pairs if readers.get(source) == 1]


def reader_counts(interpreter: Any) -> dict[str, int]:
    """How many ops read each tensor, by name."""
    details = interpreter.get_tensor_details()
    readers: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        for index in op["inputs"]:
            if index >= 0:
                name = details[index]["name"]
                readers[name] = readers.get(name, 0) + 1
    return readers


def concat_inputs(interpreter: Any) -> list[tuple[str, str]]:
    """(input, output) tensor names of every CONCATENATION: an input no ONNX tensor holds (the translator's
    per-group convs of a grouped conv) takes the concatenation's range, which covers its values."""
    details = interpreter.get_tensor_details()
    return [
        (details[index]["name"], details[op["outputs"][0]]["name"])
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONCATENATION"
        for index in op["inputs"]
    ]


def float_island_ops(interpreter: Any) -> list[str]:
    """The TFLite ops, by first output, that the translator put in its float scope (Softplus's EXP/LOG
    decomposition: no int8 kernels). They stay float between a DEQUANTIZE and a QUANTIZE."""
    details = interpreter.get_tensor_details()
    return [
        details[op["outputs"][0]]["name"]
        for op in interpreter._get_ops_details()
        if any(FLOAT_SCOPE in details[index]["name"] for index in op["outputs"])
    ]


def activation_divisions(interpreter: Any) -> list[str]:
    """DIV ops (by first output) dividing by an activation: TFLite's int8 DIV stops the interpreter when a
    divisor rounds to its zero point (EfficientViT's linear attention divides by a sum ReLU can make ~0), so
    they stay float. A division by a constant is a MUL by then."""
    details = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    computed = {i for op in ops for i in op["outputs"]} | {d["index"] for d in interpreter.get_input_details()}
    return [details[op["outputs"][0]]["name"] for op in ops if op["op_name"] == "DIV" and op["inputs"][1] in computed]


def island_internal_tensors(interpreter: Any) -> set[str]:
    """Tensors of the float scope that only float-scope ops read: they need no range. An island's output that
    an int8 op reads (a LayerNorm before a HARD_SWISH) does, like any activation."""
    details = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    in_island = [any(FLOAT_SCOPE in details[i]["name"] for i in op["outputs"]) for op in ops]
    read_outside = {details[i]["name"] for op, inside in zip(ops, in_island, strict=True) if not inside
                    for i in op["inputs"] if i >= 0}  # fmt: skip
    outputs = {d["name"] for d in interpreter.get_output_details()}
    return {d["name"] for d in details if FLOAT_SCOPE in d["name"] and d["name"] not in read_outside | outputs}


def island_notes(island: list[str]) -> list[dict[str, str]]:
    """One not-honoured line per ONNX op kind computed in float in the int8 model."""
    kinds = sorted({name.split(FLOAT_SCOPE, 1)[1].split("/", 1)[0] for name in island})
    return [
        {
            "what": f"{kind} ({sum(FLOAT_SCOPE + kind in n for n in island)} TFLite ops) computed in float",
            "why": "TFLite has no int8 kernel for it (its builtins decomposition uses EXP and LOG); "
            "its input is dequantized and its output quantized on the QuantSpec's grid",
        }
        for kind in kinds
    ]


def float_ops(interpreter: Any, mapping: dict[str, Mapping], proto: onnx.ModelProto, spec: QuantSpec) -> list[str]:
    """The TFLite ops to leave float, by their first output: those computing a tensor of an ONNX node the
    QuantSpec keeps float (a detection head's concat and what follows it). The quantizer puts a DEQUANTIZE
    before them (int8 up to there, each input on its own grid) and a QUANTIZE after them where int8 ops follow."""
    float_nodes = spec.float_nodes
    if not float_nodes:
        return []
    producer = {out: node.name for node in proto.graph.node for out in node.output}
    details = interpreter.get_tensor_details()
    kept = []
    for op in interpreter._get_ops_details():
        name = details[op["outputs"][0]]["name"]
        onnx_name = mapping[name].onnx_name if name in mapping else None
        if onnx_name is not None and producer.get(onnx_name) in float_nodes:
            kept.append(name)
    return kept


def scope_regex(tensor: str) -> str:
    """The ai-edge-quantizer scope regex of the op whose first output is `tensor` (scopes are 'out1;out2;')."""
    return "^" + re.escape(tensor) + ";"


def read_parameters(data: bytes) -> dict[str, dict[str, Any]]:
    """name -> {dtype, scales, zero_points, quantized_dimension} for every quantized tensor of a .tflite model."""
    interpreter = _interpreter(data)
    params = {}
    for detail in interpreter.get_tensor_details():
        q = detail["quantization_parameters"]
        if len(q["scales"]):
            params[detail["name"]] = {
                "dtype": np.dtype(detail["dtype"]).name,
                "scales": np.asarray(q["scales"], np.float64),
                "zero_points": np.asarray(q["zero_points"], np.int64),
                "quantized_dimension": int(q["quantized_dimension"]),
            }
    return params


def check_parameters(result: QuantizedTflite) -> list[dict[str, str]]:
    """Activations whose parameters in the produced model differ from the spec's (what TFLite overrode)."""
    params = read_parameters(result.data)
    differ = []
    for name, (scale, zero_point) in sorted(result.expected.items()):
        got = params.get(name)
        if got is None or got["dtype"] != "int8":
            continue  # float I/O edges and tensors the quantizer left in float
        if not (np.isclose(got["scales"][0], scale, rtol=1e-5) and int(got["zero_points"][0]) == zero_point):
            differ.append(
                {
                    "what": f"activation {result.mapping[name].onnx_name} (TFLite tensor {name})",
                    "why": f"TFLite fixes its parameters at scale {got['scales'][0]:.6g}, zero point "
                    f"{int(got['zero_points'][0])}; the QuantSpec asks scale {scale:.6g}, zero point {zero_point}",
                }
            )
    return differ
