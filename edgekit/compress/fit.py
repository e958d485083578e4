"""A short training loop and real data for the compression commands (`edgekit prune/distill/qat`) and the demo.

Data:

- ``digits_loaders``: the 1,000 held-out MNIST digits that ship in ``edgekit/assets`` (see
  ``edgekit.demo_data``), so no dataset package is needed at run time. They are split deterministically
  80/20 into train/eval: ``numpy.random.default_rng(seed)`` (seed 0) permutes the indices; the first 80%
  train, the rest evaluate. Pixels are normalised exactly as the shipped digit CNN's preprocessing spec
  says (``DIGITS_PREPROCESS``), so the tensors match what the runtime feeds the model.
- ``ImageFolderDataset``: a labelled image folder, one sub-folder per class (sorted names = class ids),
  each image read with OpenCV and turned into the model input by ``runtime.preprocess.preprocess``.

``fit`` trains with Adam and a rich progress bar over the steps; ``on_step(step)`` runs after every
optimizer step (pruning schedules and mask re-application hook in there). ``evaluate`` is top-1 accuracy.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from edgekit.errors import CompressError, EdgekitError

__all__ = [
    "DIGITS_PREPROCESS",
    "DigitsCNN",
    "ImageFolderDataset",
    "digits_loaders",
    "evaluate",
    "fit",
    "folder_loaders",
    "load_torch_model",
    "loader_arrays",
    "train_demo_model",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

# The shipped digits_cnn.onnx's spec (see scripts/train_digits_cnn.py): 28x28 gray, MNIST mean/std.
DIGITS_PREPROCESS: dict[str, Any] = {
    "resize": [28, 28],
    "color": "GRAY",
    "scale": 1.0 / 255.0,
    "mean": [0.1316],
    "std": [0.3088],
    "layout": "NCHW",
    "dtype": "float32",
    "interpolation": "area",
}
DIGIT_CLASSES = [str(i) for i in range(10)]


class DigitsCNN(nn.Module):
    """The demo's digit CNN (``scripts/train_digits_cnn.py``) re-created in torch; ``width`` scales the convs.

    Conv(1->w)-BN-ReLU-Pool, Conv(w->2w)-BN-ReLU-Pool, Linear(2w*7*7 -> hidden)-ReLU, Linear(hidden -> classes).
    ``width=8`` is the shipped architecture; a smaller width makes a distillation student.
    """

    def __init__(self, width: int = 8, hidden: int = 16, classes: int = 10, size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * width * (size // 4) * (size // 4), hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# -- data -------------------------------------------------------------------------------------------------


def _split(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise EdgekitError(f"need at least 2 labelled images to split into train and eval, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    return order[n_eval:], order[:n_eval]


def _loaders(x: Tensor, y: Tensor, batch_size: int, eval_fraction: float, seed: int) -> tuple[DataLoader, DataLoader]:
    train_idx, eval_idx = _split(len(y), eval_fraction, seed)
    train = TensorDataset(x[train_idx], y[train_idx])
    held = TensorDataset(x[eval_idx], y[eval_idx])
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(held, batch_size=max(batch_size, 256), shuffle=False),
    )


def digits_loaders(
    batch_size: int = 64, *, size: int = 28, eval_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """(train, eval) loaders over the shipped held-out digits: float32 [N, 1, size, size], int64 labels.

    The 1,000 digits are split deterministically (``default_rng(seed).permutation``; the first
    ``eval_fraction`` of the permutation evaluates, the rest trains: 800/200 by default).
    """
    from edgekit.demo_data import load_heldout_digits

    images, labels = load_heldout_digits()
    x = images.astype(np.float32) * np.float32(DIGITS_PREPROCESS["scale"])
    x = (x - np.float32(DIGITS_PREPROCESS["mean"][0])) / np.float32(DIGITS_PREPROCESS["std"][0])
    tensor = torch.from_numpy(np.ascontiguousarray(x[:, None]))
    if size != 28:
        tensor = F.interpolate(tensor, size=(size, size), mode="area" if size < 28 else "bilinear")
    return _loaders(tensor, torch.from_numpy(labels.astype(np.int64)), batch_size, eval_fraction, seed)


class ImageFolderDataset(Dataset):
    """A labelled image folder: ``path/<class name>/<image>``; classes are the sorted sub-folder names.

    Every image is read with OpenCV (BGR) and turned into the model input by ``runtime.preprocess.preprocess``
    with ``spec`` (a PreprocessSpec or its dict); all images are loaded once, up front.
    """

    def __init__(self, path: str | Path, spec: Any) -> None:
        import cv2

        from edgekit.runtime.preprocess import PreprocessSpec, preprocess

        root = Path(path)
        self.spec = spec if isinstance(spec, PreprocessSpec) else PreprocessSpec.from_dict(dict(spec))
        if not root.is_dir():
            raise EdgekitError(f"{root} is not a folder; pass a folder with one sub-folder of images per class")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise EdgekitError(f"{root} has no class sub-folders; put each class's images in {root}/<class name>/")
        tensors, labels = [], []
        for index, name in enumerate(self.classes):
            files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            for file in files:
                frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
                if frame is None:
                    raise EdgekitError(f"OpenCV cannot read the image {file}")
                tensors.append(torch.from_numpy(np.asarray(preprocess(frame, self.spec), dtype=np.float32)[0]))
                labels.append(index)
        if not tensors:
            raise EdgekitError(f"{root} has class folders {self.classes} but no images ({', '.join(IMAGE_SUFFIXES)})")
        self.x = torch.stack(tensors)
        self.y = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


def folder_loaders(
    path: str | Path, spec: Any, batch_size: int = 64, *, eval_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader, list[str]]:
    """(train, eval, class names) over an ``ImageFolderDataset``, split like ``digits_loaders``."""
    dataset = ImageFolderDataset(path, spec)
    train, held = _loaders(dataset.x, dataset.y, batch_size, eval_fraction, seed)
    return train, held, dataset.classes


def loader_arrays(loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """All (inputs, labels) of a loader as numpy arrays (for ONNX Runtime evaluation)."""
    xs, ys = zip(*((x, y) for x, y in loader), strict=True)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


# -- models -----------------------------------------------------------------------------------------------


def load_torch_model(path: str, *, role: str = "--model") -> nn.Module:
    """Import ``module:attr`` (dots allowed in attr): an nn.Module, or a zero-argument factory returning one."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise EdgekitError(f"{role} {path!r}: write a Python import path MODULE:ATTR, e.g. mypkg.models:make_net")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgekitError(f"{role} {path!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EdgekitError(f"{role} {path!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise EdgekitError(f"{role} {path!r} is a {type(obj).__name__}, not a torch.nn.Module or a factory of one")
    return obj


def train_demo_model(
    train_loader: DataLoader, *, epochs: int = 5, lr: float = 3e-3, width: int = 8, classes: int = 10, seed: int = 0
) -> DigitsCNN:
    """A ``DigitsCNN`` trained from scratch (seeded) on ``train_loader``."""
    torch.manual_seed(seed)
    size = int(next(iter(train_loader))[0].shape[-1])
    model = DigitsCNN(width=width, classes=classes, size=size)
    fit(model, train_loader, epochs=epochs, lr=lr, description="training the demo CNN")
    return model.eval()


# -- training ---------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    on_step: Callable[[int], Any] | None = None,
    progress: bool = True,
    extra_params: Sequence[nn.Parameter] = (),
    description: str = "training",
    checkpoint: str | Path | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` with Adam for ``epochs`` passes; return ``{"loss": [mean per epoch]}``.

    ``loss_fn(inputs, targets)`` defaults to cross-entropy of ``model(inputs)``; pass e.g.
    ``Distiller.loss``. ``on_step(step)`` (global step, from 1) runs after each ``optimizer.step()``.
    ``extra_params`` join the optimizer (e.g. distillation adapters).

    A NaN/inf loss stops training with `NonFiniteLossError`; the model is first put back to its state at the
    end of the last complete epoch (or the start), which is also saved to ``checkpoint`` when given.
    """
    from edgekit.compress.amp import NonFiniteLossError, _cpu_copy

    if epochs < 0:
        raise CompressError(f"epochs must be >= 0, got {epochs}")

    def default_loss(inputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(model(inputs), targets)

    compute = loss_fn or default_loss
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optimizer = torch.optim.Adam(params, lr=lr)
    history: dict[str, list[float]] = {"loss": []}
    total = epochs * len(train_loader)
    bar, task = _progress(progress, description, total)
    step = 0
    last_good, good_epoch = _cpu_copy(model.state_dict()), 0
    model.train()
    try:
        for epoch in range(epochs):
            losses = []
            for inputs, targets in train_loader:
                optimizer.zero_grad(set_to_none=True)
                loss = compute(inputs, targets)
                if not torch.isfinite(loss):
                    model.load_state_dict(last_good)
                    saved = ""
                    if checkpoint is not None:
                        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
                        torch.save(last_good, checkpoint)
                        saved = f", saved to {checkpoint}"
                    raise NonFiniteLossError(
                        f"the training loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}); "
                        f"training stopped and the model is back at its last good state (after epoch {good_epoch})"
                        f"{saved}. Lower --lr, or check the data for NaN/inf"
                    )
                loss.backward()
                optimizer.step()
                step += 1
                if on_step is not None:
                    on_step(step)
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(task, advance=1, description=f"{description} (loss {losses[-1]:.3f})")
            history["loss"].append(float(np.mean(losses)) if losses else math.nan)
            last_good, good_epoch = _cpu_copy(model.state_dict()), epoch + 1
    finally:
        if bar is not None:
            bar.stop()
    model.eval()
    return history


def _progress(enabled: bool, description: str, total: int) -> tuple[Any, Any]:
    if not enabled or total == 0:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    )
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``loader`` (eval mode; the training mode is restored)."""
    was_training = model.training
    model.eval()
    correct = count = 0
    try:
        with torch.no_grad():  # evaluation needs no autograd graph
            for inputs, targets in loader:
                correct += int((model(inputs).argmax(dim=1) == targets).sum())
                count += len(targets)
    finally:
        model.train(was_training)
    return correct / count if count else math.nan
