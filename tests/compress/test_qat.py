"""Quantization-aware training on real torch and ONNX Runtime: STE gradients, QAT on sklearn digits, the QDQ
export, its import back into (float model, QuantSpec), and the x86-ort int8 build from that spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from edgekit.calibration.qdq_import import quant_spec_from_qdq, split_qdq  # noqa: E402
from edgekit.calibration.quant_spec import QuantSpecError  # noqa: E402
from edgekit.compress.qat import ActivationFakeQuant, WeightFakeQuant, export_qat, prepare_qat  # noqa: E402


@pytest.mark.parametrize("learnable", [False, True])
def test_ste_per_tensor_gradient_is_upstream_inside_zero_outside(learnable: bool) -> None:
    fq = ActivationFakeQuant("uint8_asym", learnable=learnable)
    fq.set_range(-1.0, 1.0)
    x = torch.linspace(-2, 2, 101, requires_grad=True)
    upstream = torch.randn(101)
    fq(x).backward(upstream)
    scale, zp = float(fq.scale.detach()[0]), int(fq.zero_point[0])
    # STE passes the gradient where the integer is not clamped (LSQ tests the unrounded value)
    q = (x.detach() / scale if learnable else torch.round(x.detach() / scale)) + zp
    inside = (q >= 0) & (q <= 255)
    assert inside.any() and (~inside).any()
    assert torch.allclose(x.grad[inside], upstream[inside])
    assert torch.all(x.grad[~inside] == 0)


def test_ste_per_channel_gradient_is_upstream_inside_zero_outside() -> None:
    weight = torch.randn(4, 3, 3, 3)
    fq = WeightFakeQuant(weight, "int7_per_channel")
    fq.refresh(weight)
    w = (weight * 1.5).requires_grad_(True)  # 1.5x the range the scales were set for: some values clip
    fq.scale.requires_grad_(False)
    fq.forward = lambda t: torch.fake_quantize_per_channel_affine(t, fq.scale, fq.zero_point, 0, -63, 63)
    upstream = torch.randn_like(w)
    fq(w).backward(upstream)
    q = torch.round(w.detach() / fq.scale.reshape(-1, 1, 1, 1))
    inside = q.abs() <= 63
    assert inside.any() and (~inside).any()
    assert torch.allclose(w.grad[inside], upstream[inside])
    assert torch.all(w.grad[~inside] == 0)
    # the forward is the core's scheme: symmetric, 63 levels each side, per output channel
    q = fq(w).detach() / fq.scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 63 + 1e-4


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    generator = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    x_train, y_train, x_test, y_test = digits()
    model = tiny_cnn()
    train(model, x_train, y_train, epochs=6, lr=1e-2)
    float_acc = accuracy(model, x_test, y_test)
    qat = prepare_qat(model, x_test[:1], calib_batches=[x_train[:128], x_train[128:256]])
    qat_before = accuracy(qat, x_test, y_test)
    train(qat, x_train, y_train, epochs=2, lr=1e-3)
    out = tmp_path_factory.mktemp("qat")
    float_model, spec = export_qat(qat, x_test[:1], out)
    return {
        "x_test": x_test,
        "y_test": y_test,
        "float_acc": float_acc,
        "qat_before": qat_before,
        "qat": qat,
        "qat_acc": accuracy(qat, x_test, y_test),
        "float_model": float_model,
        "spec": spec,
        "out": out,
    }


def _run(path_or_bytes: Path | bytes, x: np.ndarray) -> np.ndarray:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_qat_on_digits_keeps_accuracy(qat_run: dict) -> None:
    assert qat_run["float_acc"] >= 0.9
    assert qat_run["qat_before"] >= qat_run["float_acc"] - 0.05  # calibrated init: quantizing costs little
    assert qat_run["qat_acc"] >= qat_run["float_acc"] - 0.02


def test_export_is_qdq_onnx_that_ort_runs_and_matches_torch(qat_run: dict) -> None:
    qdq = onnx.load(str(qat_run["out"] / "model.onnx"))
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") == 6 and ops.count("DequantizeLinear") == 6  # 3 activations, 3 weights
    x = qat_run["x_test"].numpy()
    logits = _run(qat_run["out"] / "model.onnx", x)
    with torch.no_grad():
        reference = qat_run["qat"](qat_run["x_test"]).numpy()
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.99
    assert np.mean(logits.argmax(1) == qat_run["y_test"].numpy()) >= qat_run["float_acc"] - 0.03
    assert {"model.onnx", "model_float.onnx", "quant_spec.json"} <= {p.name for p in qat_run["out"].iterdir()}


def test_quant_spec_round_trips_the_exported_scales(qat_run: dict) -> None:
    qdq = onnx.load(str(qat_run["out"] / "model.onnx"))
    spec = qat_run["spec"]
    assert spec.created_by == "qat"
    assert spec.source_model_sha256 == qat_run["float_model"].sha256
    assert spec.scheme == {"activations": "uint8_asym", "weights": "int7_per_channel"}
    values = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for node in qdq.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    quantizers = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    for q in quantizers:
        entry = spec.tensors[q.input[0]]  # keyed by the float tensor the quantizer reads
        np.testing.assert_array_equal(np.asarray(entry.scale, np.float32).reshape(-1), values[q.input[1]].reshape(-1))
        np.testing.assert_array_equal(np.asarray(entry.zero_point).reshape(-1), values[q.input[2]].reshape(-1))
        if entry.kind == "weight":
            assert entry.axis == 0 and entry.dtype == "int8"
        else:
            assert entry.axis is None and entry.dtype == "uint8"
    assert sum(t.kind == "bias" for t in spec.tensors.values()) == 3
    # the float model has no quantizers, and its weights sit on the int7 grid
    float_proto, found = split_qdq(qdq)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in float_proto.graph.node}
    inits = {i.name: numpy_helper.to_array(i) for i in float_proto.graph.initializer}
    for name, entry in found.items():
        if entry["kind"] == "weight":
            q = inits[name] / entry["scale"].reshape(-1, *([1] * (inits[name].ndim - 1)))
            np.testing.assert_allclose(q, np.round(q), atol=1e-3)
            assert np.abs(np.round(q)).max() <= 63
    again_float, again = quant_spec_from_qdq(qdq)
    assert again.tensors.keys() == spec.tensors.keys()


def test_x86_ort_int8_from_qat_spec_agrees_with_the_qdq_export(qat_run: dict, tmp_path: Path) -> None:
    from edgekit.targets import get_target

    artifact = get_target("x86-ort").build(
        qat_run["float_model"], tmp_path / "int8", precision="int8", quant_spec=qat_run["spec"]
    )
    model_file = artifact.path / artifact.manifest["model_file"]
    x = qat_run["x_test"].numpy()
    built, exported = _run(model_file, x), _run(qat_run["out"] / "model.onnx", x)
    assert np.mean(built.argmax(1) == exported.argmax(1)) >= 0.99
    np.testing.assert_allclose(built, exported, atol=0.1 * float(np.abs(exported).max()))


def test_spec_for_another_model_is_refused(qat_run: dict, tmp_path: Path) -> None:
    from edgekit.model import Model
    from edgekit.targets import get_target

    other = Model.from_torch(tiny_cnn().eval(), qat_run["x_test"][:1])
    with pytest.raises(QuantSpecError, match="computed for model"):
        get_target("x86-ort").build(other, tmp_path / "int8", precision="int8", quant_spec=qat_run["spec"])


def test_init_from_a_calibration_spec_maps_onto_the_layers() -> None:
    from edgekit.calibration.calibrate import calibrate
    from edgekit.model import Model

    x_train, _, x_test, _ = digits()
    model = tiny_cnn().eval()
    spec = calibrate(Model.from_torch(model, x_test[:1]), x_train[:64].numpy(), batch=64, progress=False).spec
    qat = prepare_qat(model, x_test[:1], init=spec)
    wrappers = [m for m in qat.modules() if hasattr(m, "input_quant")]
    activations = {round(t.scale, 9) for t in spec.tensors.values() if t.kind == "activation"}
    assert len(wrappers) == 3
    assert all(round(float(w.input_quant.scale[0]), 9) in activations for w in wrappers)


def test_export_with_calib_batches_completes_the_spec_for_full_integer(qat_run: dict, tmp_path: Path) -> None:
    x = qat_run["x_test"]
    _, learned = export_qat(qat_run["qat"], x[:1], tmp_path / "plain")
    float_model, spec = export_qat(qat_run["qat"], x[:1], tmp_path / "full", calib_batches=[x[:64], x[64:128]])
    added = spec.calibration["completed_by_calibration"]
    assert added and set(added).isdisjoint(learned.tensors)
    # the learned entries are kept as trained; the added ones are activations of the same scheme
    for name, entry in learned.tensors.items():
        assert spec.tensors[name].scale == entry.scale
    assert all(spec.tensors[name].dtype == "uint8" for name in added)
    qdq = onnx.load(str(tmp_path / "full" / "model.onnx"))
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    inner = {name for name in added if spec.tensors[name].kind == "activation"}
    assert inner and inner <= quantized  # conv outputs now carry Q/DQ; the logits' range is recorded ("output")
    assert {name for name in added if spec.tensors[name].kind == "output"} == {o.name for o in qdq.graph.output}
    logits = _run(tmp_path / "full" / "model.onnx", x.numpy())
    with torch.no_grad():
        reference = qat_run["qat"](x).numpy()
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.98
    spec.check_model(float_model.sha256)
