"""Every compression result exports through the core to every registered target, in every precision it builds:
structurally pruned, sparse and distilled models as float (and PTQ int8 with the target's own schemes), and
QAT results through their learned QuantSpec (trained with the target's schemes)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgekit.calibration.calibrate import calibrate  # noqa: E402
from edgekit.compress.distill import Distiller  # noqa: E402
from edgekit.compress.pruning import MagnitudePruner  # noqa: E402
from edgekit.compress.qat import export_qat, prepare_qat  # noqa: E402
from edgekit.compress.structured import prune_channels  # noqa: E402
from edgekit.model import Model  # noqa: E402
from edgekit.targets import get_target, target_names  # noqa: E402


def small_net(width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    ).eval()


X = torch.randn(64, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def compressed_models() -> dict[str, nn.Module]:
    dense = small_net()
    pruned = prune_channels(dense, X[:1], ratio=0.5, multiple_of=8).model.eval()
    sparse = small_net()
    MagnitudePruner(sparse, 0.8, scope="global").remove()
    student = small_net(width=8).train()
    distiller = Distiller(student, dense, temperature=4.0, alpha=0.5)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    loss = distiller.loss(X, torch.zeros(len(X), dtype=torch.long))
    loss.backward()
    optimizer.step()
    return {"pruned": pruned, "sparse": sparse, "distilled": student.eval()}


@pytest.mark.parametrize("target_name", target_names())
def test_compressed_models_build_for_every_target_and_precision(target_name: str, tmp_path: Path) -> None:
    target = get_target(target_name)
    for label, module in compressed_models().items():
        model = Model.from_torch(module, X[:1])
        for precision in target.precisions:
            spec = None
            if precision in target.quantized_precisions:
                spec = calibrate(
                    model,
                    X.numpy(),
                    activations=target.activation_scheme,
                    weights=target.weight_scheme,
                    batch=16,
                    progress=False,
                ).spec
            artifact = target.build(model, tmp_path / f"{label}-{precision}", precision=precision, quant_spec=spec)
            assert artifact.manifest["precision"] == precision, (label, precision)


@pytest.mark.parametrize("target_name", [n for n in target_names() if get_target(n).quantized_precisions])
def test_qat_results_build_for_every_quantizing_target(target_name: str, tmp_path: Path) -> None:
    target = get_target(target_name)
    batches = [X[:32], X[32:]]
    qat = prepare_qat(
        small_net(), X[:1], calib_batches=batches, scheme=target.weight_scheme, activations=target.activation_scheme
    )
    float_model, spec = export_qat(qat, X[:1], tmp_path / "qat", calib_batches=batches)
    assert spec.scheme == {"activations": target.activation_scheme, "weights": target.weight_scheme}
    precision = target.quantized_precisions[0]
    artifact = target.build(float_model, tmp_path / "artifact", precision=precision, quant_spec=spec)
    assert artifact.manifest["quant_spec_sha256"] == spec.sha256
