"""AdaRound: learned weight rounding (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020), recorded in the QuantSpec so that every target gets the same integers.

Round-to-nearest minimises each weight's own error, not the layer's output error. AdaRound learns, per
weight, whether to round down or up: w~ = s * clip(floor(w / s) + h(V), -qmax, qmax) with the rectified
sigmoid h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), minimising the layer's output
reconstruction error plus a regulariser lambda * sum(1 - |2h - 1|^beta) that, as beta anneals from 20 to
2, drives every h to 0 or 1. Adam, lambda 0.01, 20 % warm-up without the regulariser, as in the paper.

Layers are learned one after another in graph order. A layer's inputs come from the QDQ model (activations
quantized too) with the earlier layers' learned rounding in place: the paper's asymmetric reconstruction, chosen
over float inputs because each layer then also absorbs the error the quantized layers before it left in its
input (what the deployed model computes), which the paper measured as the better variant. To bound the ONNX
Runtime passes, layers may go in `stages`: one QDQ pass then gives the inputs of a stage's layers, so a layer sees
the learned rounding of every earlier stage but round-to-nearest in the earlier layers of its own stage. That
mismatch costs more than it saves (a layer learns to compensate an input error its predecessor then changes),
so the default is one pass per layer. The targets are the float model's
outputs of that layer (after its fused Relu/Clip, which the paper found to help). A layer's learned rounding
is kept only when it reconstructs the outputs of held-out samples better than round-to-nearest does.

Cost is bounded for a CPU: each layer sees a few thousand output positions (rows of its im2col matrix, drawn
at random from a few calibration samples), so one optimisation step is one small matrix product. The ONNX
Runtime runs are the rest: one float pass for all targets, and one QDQ pass per stage for its inputs. Torch
runs on one thread (see AdaRoundSettings.threads).

The record: per weight, its scales and a bitmask of the round-up decisions relative to floor(w / s)
(packed, zlib, base64). Replaying it snaps the float weights onto their integer grid, w = q * s, so that any
target's round-to-nearest from the spec gives back q exactly.
"""

from __future__ import annotations

import base64
import contextlib
import math
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.calibration.progress import Progress, pass_progress
from edgekit.calibration.schemes import weight_qmax
from edgekit.errors import CalibrationError
from edgekit.onnx_toolbox import attrs, consumers

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (paper: zeta 1.1, gamma -0.1)
LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class AdaRoundSettings:
    """How hard each layer is optimised: `rows` output positions sampled per layer, `iterations` Adam steps on
    `batch` of them, regulariser weight `reg`, beta annealed from `beta_start` to `beta_end` after `warmup`."""

    iterations: int = 400
    rows: int = 4096
    batch: int = 1024
    lr: float = 0.01
    reg: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    # QDQ passes that refresh the layers' inputs, each stage's layers reading one pass; None: one pass per layer,
    # fully sequential. Measured on MobileNetV2-style (int7): 16 stages -5.3 dB vs nearest, sequential +2.9 dB
    stages: int | None = None
    # torch threads while learning: a step is many small ops, which OpenMP threads slow down (measured here, a
    # loaded 2-core box: the digits CNN took 63 s on 2 threads, 6 s on 1)
    threads: int = 1
    seed: int = 0


@dataclass
class LayerRounding:
    """One layer's outcome: output reconstruction error (sum over channels, mean over the sampled positions of the
    held-out samples) with round-to-nearest and with the learned rounding."""

    node: str
    weight: str
    nearest_error: float
    adaround_error: float
    learned: bool  # False: the learned rounding was no better, round-to-nearest kept
    flipped: float  # fraction of the weights rounded the other way than round-to-nearest


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight: str
    bias: str | None
    output: str  # the float tensor reconstructed: the node's output, or its fused Relu/Clip's
    clip: tuple[float, float] | None  # the fused activation's bounds
    attrs: dict[str, Any] = field(default_factory=dict)
    kernel: list[int] = field(default_factory=list)  # a Conv's kernel size


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise CalibrationError("AdaRound rounding needs PyTorch: pip install 'edgekit[torch]'") from exc
    return torch


# -- the record in the QuantSpec, and its replay (numpy only: targets need no torch) -------------------------


def encode_round_up(up: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(up.ravel().astype(bool)).tobytes(), 9)).decode("ascii")


def decode_round_up(text: str, size: int) -> np.ndarray:
    packed = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    return np.unpackbits(packed, count=size).astype(bool)


def _broadcast_scale(scale: Any, axis: int | None, ndim: int) -> np.ndarray:
    values = np.asarray(scale, dtype=np.float32).astype(np.float64)
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def floor_grid(weight: np.ndarray, scale: Any, axis: int | None) -> np.ndarray:
    """floor(w / s) in float64, the base the round-up bits count from (the same arithmetic as the QDQ writer)."""
    return np.floor(weight.astype(np.float64) / _broadcast_scale(scale, axis, weight.ndim))


def snap(weight: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """The integers a recorded rounding chose, times their scales: float32 weights on the integer grid."""
    base = floor_grid(weight, record["scale"], record.get("axis"))
    up = decode_round_up(record["up"], weight.size).reshape(weight.shape)
    q = np.clip(base + up, -record["qmax"], record["qmax"])
    scale = _broadcast_scale(record["scale"], record.get("axis"), weight.ndim).astype(np.float32)
    return (q.astype(np.float32) * scale).astype(np.float32)


def replay(inits: dict[str, onnx.TensorProto], transform: dict[str, Any]) -> None:
    """Snap every weight of an "adaround" transform in place."""
    for name, record in transform["weights"].items():
        values = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(snap(values, record), name))


# -- which layers ------------------------------------------------------------------------------------------


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """onnx_toolbox.attrs with text attributes (auto_pad) as str."""
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs(node).items()}


def _fused_clip(node: onnx.NodeProto, readers: dict, inits: dict, outputs: set[str]) -> tuple[str, Any]:
    """The tensor to reconstruct and the bounds of a Relu/Clip that fuses into the node (None: none does)."""
    after = readers.get(node.output[0], [])
    if node.output[0] in outputs or len(after) != 1:
        return node.output[0], None
    act = after[0]
    if act.op_type == "Relu":
        return act.output[0], (0.0, math.inf)
    if act.op_type == "Clip":
        bounds = [act.input[i] if len(act.input) > i else "" for i in (1, 2)]
        if all(not b or b in inits for b in bounds):
            lo, hi = (
                float(numpy_helper.to_array(inits[b])) if b else d
                for b, d in zip(bounds, (-math.inf, math.inf), strict=True)
            )
            return act.output[0], (lo, hi)
    return node.output[0], None


def find_layers(model: onnx.ModelProto, spec: Any) -> list[_Layer]:
    """Quantized Conv (2-D), Gemm and MatMul nodes with a weight of their own, in graph order."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    layers = []
    for node in graph.node:
        if node.op_type not in LAYER_OPS or node.name in spec.float_nodes or len(node.input) < 2:
            continue
        weight = node.input[1]
        entry = spec.tensors.get(weight)
        if entry is None or entry.kind != "weight" or weight not in inits or len(readers.get(weight, [])) != 1:
            continue
        dims = list(inits[weight].dims)
        values = _attrs(node)
        if node.op_type == "Conv" and len(dims) != 4 or node.op_type != "Conv" and len(dims) != 2:
            continue  # 1-D/3-D convolutions and batched MatMul weights keep round-to-nearest
        if node.op_type == "Gemm" and values.get("transA", 0):
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        if node.op_type == "Gemm" and bias and int(np.prod(inits[bias].dims)) != dims[0 if values.get("transB") else 1]:
            continue  # a Gemm whose C is not a per-output bias
        output, clip = _fused_clip(node, readers, inits, outputs)
        layers.append(_Layer(node, weight, bias, output, clip, values, list(values.get("kernel_shape", dims[2:]))))
    return layers


# -- the data: float targets once, quantized inputs per layer -------------------------------------------------


def _as_rows(values: np.ndarray, layer: _Layer) -> np.ndarray:
    """A layer's output as (positions, channels): NCHW -> (N*H*W, C) for a Conv, (..., C) -> (rows, C) else."""
    if layer.node.op_type == "Conv":
        return values.transpose(0, 2, 3, 1).reshape(-1, values.shape[1])
    return values.reshape(-1, values.shape[-1])


def _float_targets(
    model: onnx.ModelProto, layers: list[_Layer], feeds: list[dict[str, np.ndarray]], per_sample: int, seed: int
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Per layer: the float outputs at the sampled positions (rows, channels), and per sample the positions."""
    from edgekit.calibration.graph import session_with_outputs

    names = list(dict.fromkeys(layer.output for layer in layers))
    session = session_with_outputs(model, names)
    rng = np.random.default_rng(seed)
    targets: list[list[np.ndarray]] = [[] for _ in layers]
    picks: list[list[np.ndarray]] = [[] for _ in layers]
    for feed in feeds:
        values = dict(zip(names, session.run(names, feed), strict=True))
        for index, layer in enumerate(layers):
            rows = _as_rows(values[layer.output], layer)
            chosen = np.sort(rng.choice(len(rows), min(len(rows), per_sample), replace=False))
            picks[index].append(chosen)
            targets[index].append(np.ascontiguousarray(rows[chosen], dtype=np.float32))
    return [np.concatenate(t) for t in targets], picks


def _conv_pads(layer: _Layer, spatial: tuple[int, int], kernel: list[int]) -> list[int]:
    """ONNX pads [top, left, bottom, right], from `pads` or from SAME_UPPER/SAME_LOWER auto_pad."""
    values = layer.attrs
    auto = values.get("auto_pad", "NOTSET")
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(values.get("pads", [0, 0, 0, 0]))
    begins, ends = [], []
    for size, k, s, d in zip(
        spatial, kernel, values.get("strides", [1, 1]), values.get("dilations", [1, 1]), strict=True
    ):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        first = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begins.append(first)
        ends.append(total - first)
    return begins + ends


def _input_rows(values: np.ndarray, layer: _Layer, torch: Any) -> Any:
    """The layer's input as the rows its output positions read: im2col for a Conv, (rows, K) otherwise."""
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if layer.node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])
    top, left, bottom, right = _conv_pads(layer, tuple(x.shape[2:]), layer.kernel)
    x = torch.nn.functional.pad(x, (left, right, top, bottom))
    cols = torch.nn.functional.unfold(
        x,
        kernel_size=tuple(layer.kernel),
        dilation=tuple(layer.attrs.get("dilations", [1, 1])),
        stride=tuple(layer.attrs.get("strides", [1, 1])),
    )
    return cols.permute(0, 2, 1).reshape(-1, cols.shape[1])


def _quantized_inputs(
    model: onnx.ModelProto,
    spec: Any,
    layers: list[_Layer],
    feeds: list[dict[str, np.ndarray]],
    picks: list[list[np.ndarray]],
    torch: Any,
) -> list[Any]:
    """Each layer's input in one ONNX Runtime pass of the QDQ model of `model` (the rounding learned so far in
    place), at its sampled rows."""
    from edgekit.calibration.graph import session_with_outputs
    from edgekit.calibration.qdq import write_qdq

    qdq = write_qdq(model, spec)
    by_name = {n.name: n for n in qdq.graph.node}
    names = [by_name[layer.node.name].input[0] for layer in layers]  # their DequantizeLinear's outputs
    graph_inputs = {i.name for i in qdq.graph.input}
    computed = list(dict.fromkeys(n for n in names if n not in graph_inputs))
    session = session_with_outputs(qdq, computed) if computed else None
    rows: list[list[Any]] = [[] for _ in layers]
    for sample, feed in enumerate(feeds):
        values = dict(feed)
        if session is not None:
            values.update(zip(computed, session.run(computed, feed), strict=True))
        for index, (layer, name) in enumerate(zip(layers, names, strict=True)):
            chosen = torch.from_numpy(picks[index][sample])
            rows[index].append(_input_rows(values[name], layer, torch)[chosen])
    return [torch.cat(r) for r in rows]


def _stages(count: int, stages: int | None) -> list[range]:
    """`count` layers in at most `stages` consecutive runs of near-equal length (None: one layer each)."""
    bounds = np.linspace(0, count, min(count, max(1, stages or count)) + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# -- learning one layer's rounding ----------------------------------------------------------------------------


class _LayerFunction:
    """The layer as a function of its input rows and a weight tensor (torch), with its fused activation."""

    def __init__(self, layer: _Layer, bias: np.ndarray | None, torch: Any) -> None:
        self.layer, self.torch = layer, torch
        op, values = layer.node.op_type, layer.attrs
        self.groups = int(values.get("group", 1)) if op == "Conv" else 1
        self.alpha = float(values.get("alpha", 1.0)) if op == "Gemm" else 1.0
        beta = float(values.get("beta", 1.0)) if op == "Gemm" else 1.0
        self.bias = None if bias is None else torch.from_numpy(bias.astype(np.float32).ravel() * beta)

    def __call__(self, rows: Any, weight: Any) -> Any:
        op = self.layer.node.op_type
        if op == "Conv" and self.groups > 1 and self.groups == weight.shape[0]:  # depthwise: a product per channel
            y = (rows.reshape(len(rows), self.groups, -1) * weight.reshape(self.groups, -1)).sum(-1)
        elif op == "Conv" and self.groups > 1:
            out_channels = weight.shape[0]
            grouped = weight.reshape(self.groups, out_channels // self.groups, -1)
            y = self.torch.einsum("mgk,gok->mgo", rows.reshape(len(rows), self.groups, -1), grouped)
            y = y.reshape(len(rows), out_channels)
        elif op == "Conv" or op == "Gemm" and self.layer.attrs.get("transB", 0):
            y = rows @ weight.reshape(weight.shape[0], -1).T
        else:  # Gemm without transB, MatMul: weight is (K, N)
            y = rows @ weight
        y = y * self.alpha if self.alpha != 1.0 else y
        if self.bias is not None:
            y = y + self.bias
        if self.layer.clip is not None:
            lo, hi = self.layer.clip
            y = y.clamp(min=lo if math.isfinite(lo) else None, max=hi if math.isfinite(hi) else None)
        return y


def _h(v: Any, torch: Any) -> Any:
    """The rectified sigmoid: in [0, 1], reaching both ends (a plain sigmoid would never round exactly)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _beta(step: int, warm: int, settings: AdaRoundSettings) -> float:
    """Cosine annealing of the regulariser's exponent from beta_start to beta_end after the warm-up."""
    progress = (step - warm) / max(1, settings.iterations - warm)
    return settings.beta_end + 0.5 * (settings.beta_start - settings.beta_end) * (1 + math.cos(math.pi * progress))


def _reconstruction(function: _LayerFunction, rows: Any, target: Any, weight: Any) -> Any:
    return ((function(rows, weight) - target) ** 2).sum(1).mean()


def _optimise(
    function: _LayerFunction, rows: Any, target: Any, base: Any, rest: Any, scale: Any, qmax: int, settings: Any
) -> Any:
    """Learn V (h(V) starts at the fractional part, i.e. at the float weight); the round-up decisions h >= 0.5."""
    torch = function.torch
    p = (rest - GAMMA) / (ZETA - GAMMA)
    v = torch.log(p / (1 - p)).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([v], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    warm = int(settings.iterations * settings.warmup)
    for step in range(settings.iterations):
        chosen = (
            torch.randint(len(rows), (settings.batch,), generator=generator) if len(rows) > settings.batch else None
        )
        batch_rows, batch_target = (rows, target) if chosen is None else (rows[chosen], target[chosen])
        h = _h(v, torch)
        loss = _reconstruction(function, batch_rows, batch_target, torch.clamp(base + h, -qmax, qmax) * scale)
        if step >= warm:
            loss = loss + settings.reg * (1 - (2 * h - 1).abs().pow(_beta(step, warm, settings))).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return (v.detach() >= 0).numpy()  # h(V) >= 0.5 exactly where V >= 0


def round_layer(
    layer: _Layer,
    weight: np.ndarray,
    bias: np.ndarray | None,
    entry: Any,
    qmax: int,
    rows: Any,
    target: Any,
    settings: AdaRoundSettings,
    train: int,
) -> tuple[dict[str, Any] | None, LayerRounding]:
    """Learn one layer's rounding on the first `train` rows, judge it against round-to-nearest on the others (all
    rows when there are no others); its record for the QuantSpec (None: nearest was as good) and outcome."""
    torch = _torch()
    function = _LayerFunction(layer, bias, torch)
    scale64 = _broadcast_scale(entry.scale, entry.axis, weight.ndim)
    base = floor_grid(weight, entry.scale, entry.axis)
    nearest = np.clip(np.round(weight.astype(np.float64) / scale64), -qmax, qmax)
    scale = torch.from_numpy(scale64.astype(np.float32))
    target_t = torch.from_numpy(target)
    base_t = torch.from_numpy(base.astype(np.float32))
    rest = torch.from_numpy((weight.astype(np.float64) / scale64 - base).astype(np.float32))
    up = _optimise(function, rows[:train], target_t[:train], base_t, rest, scale, qmax, settings)
    learned = np.clip(base + up, -qmax, qmax)
    held = slice(train, None) if train < len(rows) else slice(None)
    with torch.no_grad():
        errors = [
            float(_reconstruction(function, rows[held], target_t[held], torch.from_numpy(q.astype(np.float32)) * scale))
            for q in (nearest, learned)
        ]
    better = errors[1] < errors[0]
    outcome = LayerRounding(
        layer.node.name, layer.weight, errors[0], errors[1], better, float(np.mean(learned != nearest))
    )
    if not better:
        return None, outcome
    record = {
        "scale": [float(s) for s in np.ravel(entry.scale)] if entry.axis is not None else float(entry.scale),
        "axis": entry.axis,
        "qmax": qmax,
        "up": encode_round_up(learned > base),
    }
    return record, outcome


# -- the whole model ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(torch: Any, threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def adaround(
    float_model: onnx.ModelProto,
    spec: Any,
    feeds: list[dict[str, np.ndarray]],
    *,
    settings: AdaRoundSettings = AdaRoundSettings(),
    progress: Progress = True,
) -> tuple[dict[str, Any], list[LayerRounding]]:
    """Learn the rounding of every quantized Conv/Gemm/MatMul weight of `float_model` (prepared, with `spec`
    written for it) on `feeds`; the weights are snapped in place. Returns the "adaround" transform for
    `spec.transforms` and each layer's outcome."""
    torch = _torch()
    layers = find_layers(float_model, spec)
    transform: dict[str, Any] = {"kind": "adaround", "settings": {**asdict(settings), "samples": len(feeds)}}
    if not layers or not feeds:
        return {**transform, "weights": {}}, []
    per_sample = math.ceil(settings.rows / len(feeds))
    targets, picks = _float_targets(float_model, layers, feeds, per_sample, settings.seed)  # before any snapping
    qmax = weight_qmax(spec.scheme["weights"])
    inits = {i.name: i for i in float_model.graph.initializer}
    records: dict[str, dict[str, Any]] = {}
    outcomes = []
    # a quarter of the samples is held out: learned rounding can overfit the rows it saw (a classifier's Gemm has
    # one row per sample), and is kept only where it beats round-to-nearest on rows it did not see
    trained = len(feeds) - len(feeds) // 4
    with pass_progress("adaround layers", len(layers), progress) as bar, _torch_threads(torch, settings.threads):
        for stage in _stages(len(layers), settings.stages):
            group = [layers[i] for i in stage]
            inputs = _quantized_inputs(float_model, spec, group, feeds, [picks[i] for i in stage], torch)
            for layer, rows, index in zip(group, inputs, stage, strict=True):
                weight = numpy_helper.to_array(inits[layer.weight])
                bias = numpy_helper.to_array(inits[layer.bias]) if layer.bias else None
                entry = spec.tensors[layer.weight]
                train = sum(len(p) for p in picks[index][:trained])  # the later samples' rows judge the result
                record, outcome = round_layer(layer, weight, bias, entry, qmax, rows, targets[index], settings, train)
                if record is not None:
                    records[layer.weight] = record
                    replay(inits, {"weights": {layer.weight: record}})  # the next stages read this rounding
                outcomes.append(outcome)
                bar.advance()
    return {**transform, "weights": records}, outcomes
