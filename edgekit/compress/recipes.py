"""Prune, distill and QAT from start to finish: load the data and the model, compress, fine-tune, export,
write the output folder. `edgekit prune`, `edgekit distill` and `edgekit qat` are thin shells over these;
they work from Python too::

    data = load_data("imgs/")                       # or None: the demo digits shipped with edgekit
    model = prepare_model(data, "mypkg.nets:net")   # or an nn.Module, or None: train the demo CNN
    result = prune_structured(model, data, "out", ratio=0.5, training=Training(epochs=2))
    rows = compare(result.before, result.after, data, ("original", "pruned"))

Nothing here prints; each recipe returns what it did (layers it left whole, rounds it kept, weights it
zeroed) for the caller to show.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from edgekit.artifact import Artifact
from edgekit.calibration.quant_spec import QuantSpec
from edgekit.compress import fit as fitting
from edgekit.compress.channel_schedule import ChannelRound
from edgekit.compress.compare import CompareRow
from edgekit.compress.structured import Criterion
from edgekit.errors import CompressError, EdgekitError
from edgekit.model import Model

__all__ = [
    "LAST_GOOD",
    "DistillResult",
    "PruneResult",
    "QatResult",
    "Training",
    "TrainingData",
    "check_classes",
    "compare",
    "demo_student",
    "distill",
    "export",
    "load_data",
    "load_teacher",
    "prepare_model",
    "prune_structured",
    "prune_unstructured",
    "qat",
    "teacher_loss",
]

LAST_GOOD = "last_good.pt"  # where a recipe keeps the last good weights (in its output folder) when the loss turns NaN


@dataclass
class TrainingData:
    """Labelled data split 80/20, with what exporting and comparing need."""

    train: DataLoader
    eval: DataLoader
    spec: dict[str, Any]  # the preprocessing spec the exported model carries
    classes: list[str]
    example: Tensor  # one input (batch 1): traces the model for pruning and export
    eval_arrays: tuple[np.ndarray, np.ndarray]  # the eval split as arrays, for ONNX Runtime


@dataclass
class Training:
    """How a recipe trains: Adam for `epochs` passes at learning rate `lr`."""

    epochs: int = 3
    lr: float = 1e-3


@dataclass
class PruneResult:
    """A pruned model: `before`/`after` exported to ONNX, `after` also written to `path`."""

    module: nn.Module
    before: Model
    after: Model
    path: Path
    skipped: dict[str, str] = field(default_factory=dict)  # structured: layer -> why it was left whole
    rounds: list[ChannelRound] = field(default_factory=list)  # structured toward a MAC target: each round
    baseline: float | None = None  # rounds: the unpruned model's top-1 (%)
    reached_target: bool = True  # rounds: False when channel counts in multiples of N could not go further
    macs_fraction: float | None = None  # rounds: of the original MACs that remain
    zero_weights: int = 0  # unstructured: weights that are zero, of `prunable_weights`
    prunable_weights: int = 0


@dataclass
class DistillResult:
    """A trained student written to `path`; `teacher` as an ONNX model, for the comparison."""

    module: nn.Module
    teacher: Model
    student: Model
    path: Path


@dataclass
class QatResult:
    """A QAT export in `out` (model.onnx, model_float.onnx, quant_spec.json) and its x86-ort int8 artifact."""

    before: Model
    float_model: Model
    spec: QuantSpec
    artifact: Artifact
    int8: Model


# -- data and models ------------------------------------------------------------------------------------------


def load_data(
    data: str | Path | None = None, *, preprocess: Mapping[str, Any] | None = None, batch_size: int = 64
) -> TrainingData:
    """Loaders over a labelled image folder (one sub-folder per class), or the demo digits when `data` is None.
    `preprocess` overrides keys of the digits' 28x28 gray spec."""
    spec: dict[str, Any] = dict(fitting.DIGITS_PREPROCESS)
    spec.update(preprocess or {})
    if data:
        train, held, classes = fitting.folder_loaders(data, spec, batch_size)
    else:
        train, held = fitting.digits_loaders(batch_size)
        classes = list(fitting.DIGIT_CLASSES)
    example = next(iter(train))[0][:1].clone()
    return TrainingData(train, held, spec, classes, example, fitting.loader_arrays(held))


def prepare_model(data: TrainingData, model: str | nn.Module | None = None, *, demo_epochs: int = 5) -> nn.Module:
    """The model to compress, in eval mode: an nn.Module, one by import path (MODULE:ATTR), or with None the
    demo digit CNN trained here for `demo_epochs`. Its class count must match the data's."""
    if model is None:
        module = fitting.train_demo_model(data.train, epochs=demo_epochs, classes=len(data.classes))
    elif isinstance(model, nn.Module):
        module = model
    else:
        module = fitting.load_torch_model(model)
    check_classes(module, data, "the model")
    return module.eval()


def _output_classes(module: Any, example: Tensor) -> int:
    with torch.no_grad():
        out = module(example)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.shape[-1])


def check_classes(run: Any, data: TrainingData, label: str, *, mismatch: str = "but the data has") -> int:
    """How many classes `run` (a module or teacher callable) predicts on the data's input; an input it
    cannot take, or a class count that differs from the data's, is a clear error."""
    try:
        n = _output_classes(run.eval() if hasattr(run, "eval") else run, data.example)
    except Exception as exc:  # the user's model (or ORT) may raise anything on an input it does not take
        raise CompressError(
            f"{label} does not run on the data's input of shape {list(data.example.shape)} "
            f"({type(exc).__name__}: {exc}); pass --data/--preprocess that match it"
        ) from exc
    if n != len(data.classes):
        raise CompressError(f"{label} outputs {n} classes {mismatch} {len(data.classes)} ({', '.join(data.classes)})")
    return n


def export(module: nn.Module, data: TrainingData) -> Model:
    """`module` as an ONNX Model carrying the data's preprocessing and class names."""
    return Model.from_torch(module, data.example, preprocess=data.spec, class_names=data.classes)


def compare(before: Model, after: Model, data: TrainingData, names: tuple[str, str]) -> list[CompareRow]:
    """Size, parameters, MACs, ONNX Runtime latency and top-1 on the eval split, of both models."""
    from edgekit.compress.compare import before_after, ort_top1

    return before_after(before, after, ort_top1(*data.eval_arrays), names=names)


def teacher_loss(student: nn.Module, teacher: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """Knowledge distillation from `teacher` (a frozen copy) into `student`: the loss for `fit`."""
    from edgekit.compress.distill import Distiller

    return Distiller(student, copy.deepcopy(teacher).eval(), temperature=4.0, alpha=0.5).loss


def _save(module: nn.Module, data: TrainingData, out: str | Path) -> tuple[Model, Path]:
    exported = export(module.eval(), data)
    path = Path(out) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    exported.save(path)
    return exported, path


# -- pruning ------------------------------------------------------------------------------------------------


def _fine_tuner(original: nn.Module, data: TrainingData, out: str | Path, training: Training, distill: bool) -> Any:
    def fine_tune(model: nn.Module) -> None:
        fitting.fit(
            model,
            data.train,
            epochs=training.epochs,
            lr=training.lr,
            description="fine-tuning",
            checkpoint=Path(out) / LAST_GOOD,
            loss_fn=teacher_loss(model, original) if distill else None,
        )

    return fine_tune


def _prune_channels(prune: Callable[[], Any]) -> Any:
    """Run a channel-pruning call; its bad-setting errors (structured.py still raises ValueError for them)
    become CompressError, so they reach the user as one clear line."""
    try:
        return prune()
    except EdgekitError:
        raise
    except ValueError as exc:
        raise CompressError(str(exc)) from exc


def prune_structured(
    model: nn.Module,
    data: TrainingData,
    out: str | Path,
    *,
    ratio: float = 0.5,
    criterion: Criterion = "l1",
    multiple_of: int = 8,
    coupled: Literal["prune", "keep"] = "prune",
    target_macs: float | None = None,
    rounds: int = 1,
    max_drop: float | None = None,
    training: Training | None = None,
    distill: bool = False,
) -> PruneResult:
    """Remove whole conv channels of `model` (left untouched), fine-tune, write `out`/model.onnx: one cut
    by `ratio`, or with `target_macs` `rounds` cut + fine-tune rounds until that fraction of the MACs
    remains (stopping at the last round within `max_drop` top-1 points of the original)."""
    from edgekit.compress.channel_schedule import prune_channels_iteratively
    from edgekit.compress.structured import prune_channels

    training = training or Training()
    fine_tune = _fine_tuner(model, data, out, training, distill)
    before = export(copy.deepcopy(model), data)
    options: dict[str, Any] = {"criterion": criterion, "multiple_of": multiple_of, "coupled": coupled}
    if target_macs is None:
        cut = _prune_channels(lambda: prune_channels(copy.deepcopy(model), data.example, ratio=ratio, **options))
        fine_tune(cut.model)
        after, path = _save(cut.model, data, out)
        return PruneResult(cut.model, before, after, path, skipped=dict(cut.report.skipped))

    def top1(candidate: nn.Module) -> float:
        return fitting.evaluate(candidate, data.eval) * 100

    scheduled = _prune_channels(
        lambda: prune_channels_iteratively(
            copy.deepcopy(model),
            data.example,
            fine_tune,
            top1,
            target_macs=target_macs,
            steps=rounds,
            max_drop=max_drop,
            **options,
        )
    )
    after, path = _save(scheduled.model, data, out)
    return PruneResult(
        scheduled.model,
        before,
        after,
        path,
        rounds=list(scheduled.rounds),
        baseline=scheduled.baseline,
        reached_target=scheduled.reached_target,
        macs_fraction=scheduled.macs_fraction,
    )


def prune_unstructured(
    model: nn.Module,
    data: TrainingData,
    out: str | Path,
    *,
    sparsity: float = 0.8,
    schedule: Literal["cubic", "oneshot"] = "cubic",
    training: Training | None = None,
    distill: bool = False,
) -> PruneResult:
    """Zero the smallest weights of `model` (left untouched) while training: reach `sparsity` gradually over
    the first half of training (cubic) or at once, then write `out`/model.onnx."""
    from edgekit.compress.pruning import CubicSchedule, MagnitudePruner, OneShotSchedule

    training = training or Training()
    before = export(copy.deepcopy(model), data)
    work = copy.deepcopy(model)
    steps = max(1, training.epochs * len(data.train))
    chosen = CubicSchedule(0.0, sparsity, 0, max(1, steps // 2)) if schedule == "cubic" else OneShotSchedule(sparsity)
    pruner = MagnitudePruner(work, chosen)
    fitting.fit(
        work,
        data.train,
        epochs=training.epochs,
        lr=training.lr,
        on_step=pruner.step,
        description="pruning",
        checkpoint=Path(out) / LAST_GOOD,
        loss_fn=teacher_loss(work, model) if distill else None,
    )
    pruner.apply(sparsity)  # the target, even when training was too short to reach it
    pruner.remove()
    with torch.no_grad():
        zeros = sum(int((m.weight == 0).sum()) for m in pruner.layers.values())
        total = sum(m.weight.numel() for m in pruner.layers.values())
    after, path = _save(work, data, out)
    return PruneResult(work, before, after, path, zero_weights=zeros, prunable_weights=total)


# -- distillation -------------------------------------------------------------------------------------------


def load_teacher(teacher: str | Path | nn.Module, data: TrainingData) -> tuple[Model, Any]:
    """(the teacher as an ONNX Model, the callable that gives its logits): an .onnx file run by ONNX
    Runtime, a torch module, or one by import path. Its class count must match the data's."""
    from edgekit.compress.distill import OnnxTeacher

    if isinstance(teacher, nn.Module):
        module = teacher.eval()
        teacher_model, teacher_fn = export(module, data), module
    elif str(teacher).endswith(".onnx") or Path(teacher).is_file():
        teacher_model = Model.load(teacher)
        teacher_fn = OnnxTeacher(teacher_model)
    else:
        module = fitting.load_torch_model(str(teacher), role="--teacher").eval()
        teacher_model, teacher_fn = export(module, data), module
    check_classes(teacher_fn, data, f"the teacher {teacher}", mismatch="but the student learns")
    return teacher_model, teacher_fn


def demo_student(data: TrainingData) -> nn.Module:
    """A half-width demo digit CNN, freshly initialised (seeded), sized for the data."""
    torch.manual_seed(0)
    return fitting.DigitsCNN(width=4, classes=len(data.classes), size=int(data.example.shape[-1]))


def distill(
    teacher: str | Path | nn.Module,
    data: TrainingData,
    out: str | Path,
    *,
    student: str | nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    training: Training | None = None,
) -> DistillResult:
    """Train `student` (a module, one by import path, or None: `demo_student`) to mimic `teacher` (see
    `load_teacher`) with the Hinton loss, then write `out`/model.onnx (the student)."""
    from edgekit.compress.distill import Distiller

    training = training or Training()
    teacher_model, teacher_fn = load_teacher(teacher, data)
    if student is None:
        module = demo_student(data)
    elif isinstance(student, nn.Module):
        module = student
    else:
        module = fitting.load_torch_model(student, role="--student")
    check_classes(module, data, "the student")
    distiller = Distiller(module, teacher_fn, temperature=temperature, alpha=alpha)
    fitting.fit(
        module,
        data.train,
        epochs=training.epochs,
        lr=training.lr,
        loss_fn=distiller.loss,
        description="distilling",
        checkpoint=Path(out) / LAST_GOOD,
    )
    after, path = _save(module, data, out)
    return DistillResult(module, teacher_model, after, path)


# -- quantization-aware training ----------------------------------------------------------------------------


def qat(
    model: nn.Module,
    data: TrainingData,
    out: str | Path,
    *,
    spec: str | Path | QuantSpec | None = None,
    learnable: bool = False,
    training: Training | None = None,
) -> QatResult:
    """Fine-tune `model` (left untouched) with int8 fake quantization, starting activation scales from
    `spec` (a QuantSpec or its path; None: calibrate on four training batches), then write `out`
    (model.onnx QDQ, model_float.onnx, quant_spec.json) and the x86-ort int8 artifact `out`/x86-ort-int8."""
    from edgekit.api import build as build_artifact
    from edgekit.compress.qat import export_qat, prepare_qat

    training = training or Training()
    before = export(copy.deepcopy(model), data)
    init = QuantSpec.load(spec) if isinstance(spec, (str, Path)) else spec
    calib = [x for x, _ in list(data.train)[:4]]
    prepared = prepare_qat(
        copy.deepcopy(model), data.example, init=init, calib_batches=None if init else calib, learnable=learnable
    )
    fitting.fit(
        prepared,
        data.train,
        epochs=training.epochs,
        lr=training.lr,
        description="QAT",
        checkpoint=Path(out) / LAST_GOOD,
    )
    # the calibration batches also complete the learned spec (conv outputs, pooling, logits) for full-integer targets
    float_model, learned = export_qat(
        prepared.eval(), data.example, out, preprocess=data.spec, class_names=data.classes, calib_batches=calib
    )
    artifact = build_artifact(float_model, "x86-ort", Path(out) / "x86-ort-int8", precision="int8", quant_spec=learned)
    return QatResult(before, float_model, learned, artifact, Model.load(artifact.model_path))
