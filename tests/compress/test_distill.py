"""Distillation building blocks against hand computations and real ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from edgekit.compress.distill import Distiller, FeatureDistiller, OnnxTeacher, kd_loss  # noqa: E402
from edgekit.model import Model  # noqa: E402

STUDENT = np.array([[1.0, 2.0, 0.5, -1.0], [0.2, -0.3, 1.5, 0.0], [2.0, 1.0, 0.0, -2.0]], dtype=np.float64)
TEACHER = np.array([[0.5, 3.0, 0.0, -0.5], [1.0, 0.0, 2.0, -1.0], [1.5, 1.5, -1.0, -1.0]], dtype=np.float64)
TARGETS = np.array([1, 2, 0])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kd_numpy(zs: np.ndarray, zt: np.ndarray, y: np.ndarray, t: float, alpha: float) -> float:
    ce = -np.log(_softmax(zs)[np.arange(len(y)), y]).mean()
    p, q = _softmax(zt / t), _softmax(zs / t)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=1).mean()
    return alpha * ce + (1 - alpha) * t * t * kl


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_kd_loss_matches_numpy(temperature: float, alpha: float) -> None:
    got = kd_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), temperature=temperature, alpha=alpha
    )
    assert got.item() == pytest.approx(_kd_numpy(STUDENT, TEACHER, TARGETS, temperature, alpha), rel=1e-10)


def test_kd_loss_gradient_reaches_student_only() -> None:
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    kd_loss(student, teacher, torch.tensor(TARGETS)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_loss_mismatched_classes_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 5\).*\(3, 4\)"):
        kd_loss(torch.zeros(3, 4), torch.zeros(3, 5), torch.tensor(TARGETS))
    with pytest.raises(ValueError, match="targets"):
        kd_loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.tensor([0, 1]))


def _convnet(width: int, classes: int = 5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


def test_feature_distiller_adapts_widths_and_loss_goes_down() -> None:
    torch.manual_seed(0)
    student, teacher = _convnet(4), _convnet(16)
    teacher.eval()
    features = FeatureDistiller(student, teacher, {"1": "1"})
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        teacher(x)
    student(x)
    first = features.loss()
    assert isinstance(features.adapters["1"], nn.Conv2d)
    assert features.adapters["1"].weight.shape == (16, 4, 1, 1)
    optimizer = torch.optim.Adam([*student.parameters(), *features.parameters()], lr=0.02)
    for _ in range(30):
        with torch.no_grad():
            teacher(x)
        student(x)
        loss = features.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first.item()
    assert all(p.grad is None for p in teacher.parameters())
    features.remove()
    student(x)
    with pytest.raises(RuntimeError, match="run the student and the teacher"):
        features.loss()


def test_feature_distiller_interpolates_spatial_sizes_and_names_unknown_modules() -> None:
    student = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1))
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    features = FeatureDistiller(student, teacher, {"0": "0"})
    x = torch.randn(2, 3, 8, 8)
    teacher(x)
    student(x)
    assert features.loss().item() > 0
    assert len(features.adapters) == 0  # same width: no adapter
    with pytest.raises(ValueError, match="no module named 'nope'"):
        FeatureDistiller(student, teacher, {"nope": "0"})


def test_onnx_teacher_matches_torch_teacher() -> None:
    torch.manual_seed(1)
    teacher = _convnet(8).eval()
    x = torch.randn(4, 3, 8, 8)
    onnx_teacher = OnnxTeacher(Model.from_torch(teacher, x[:2]).to_bytes())
    with torch.no_grad():
        expected = teacher(x)
    got = onnx_teacher(x)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_distiller_with_onnx_teacher_and_features() -> None:
    torch.manual_seed(2)
    teacher = _convnet(8).eval()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    student = _convnet(4)
    onnx_distiller = Distiller(student, OnnxTeacher(Model.from_torch(teacher, x).to_bytes()), temperature=2.0)
    torch_distiller = Distiller(student, teacher, temperature=2.0)
    torch.testing.assert_close(onnx_distiller.loss(x, y), torch_distiller.loss(x, y), rtol=1e-4, atol=1e-5)

    with_features = Distiller(student, teacher, temperature=2.0, features={"0": "0"})
    with_features.prepare(x)
    assert len(with_features.parameters()) == 1
    loss = with_features.loss(x, y)
    loss.backward()
    assert set(with_features.last_terms) == {"kd", "features"}
    assert all(p.grad is not None for p in student.parameters())
    with pytest.raises(TypeError, match="torch teacher"):
        Distiller(student, onnx_distiller.teacher, features={"0": "0"})
