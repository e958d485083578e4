"""Helpers shared by the benchmark scripts: real models and sources, medians, a results table."""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
from pathlib import Path

WORK = Path(tempfile.gettempdir()) / "edgekit-bench"


def paddleocr_model(kind: str) -> Path | None:
    """A real pretrained PaddleOCR model shipped in the rapidocr wheel (kind: det, rec or cls)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        return None
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    names = {"det": "*det*.onnx", "rec": "*rec*.onnx", "cls": "*cls*.onnx"}
    found = sorted(models.glob(names[kind]))
    return found[0] if found else None


def digits_video(frame_size: tuple[int, int] = (112, 112), count: int | None = None) -> tuple[Path, list[int]]:
    from edgekit.demo_data import load_heldout_digits, render_digits_video

    images, labels = load_heldout_digits()
    if count:
        images, labels = images[:count], labels[:count]
    out = WORK / f"digits_{frame_size[0]}x{frame_size[1]}_{len(images)}.mp4"
    WORK.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        render_digits_video(images, labels, out, frame_size=frame_size)
    return out, [int(v) for v in labels]


def ort_session(data: bytes):
    """An ONNX Runtime CPU session on one intra- and one inter-op thread (batch-1 latency on a shared box)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def interleaved_latency(models: dict[str, bytes], sample, *, rounds: int = 8, runs: int = 100) -> Interleaved:
    """Batch-1 latency of each ONNX model in ORT (one thread): rounds that visit every model in turn (so drift on a
    shared machine hits them alike), each visit with a fresh session (eight fresh sessions of one model measured
    0.35-0.65 ms back to back), `runs` timed runs after 20 warm-up runs."""
    import time

    per_round: dict[str, list[float]] = {key: [] for key in models}
    for _ in range(rounds):
        for key, data in models.items():
            session = ort_session(data)
            feed = {session.get_inputs()[0].name: sample}
            for _ in range(20):
                session.run(None, feed)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - start)
            per_round[key].append(median(times) * 1e3)
    return Interleaved(per_round)


class Interleaved:
    """Per-model medians of every round's median (ms), and speed-ups paired round by round: a ratio of two models
    measured seconds apart, then the median over rounds, is steadier than a ratio of two overall medians when
    the machine's load drifts."""

    def __init__(self, per_round: dict[str, list[float]]) -> None:
        self.per_round = per_round

    def ms(self, key: str) -> float:
        return median(self.per_round[key])

    def speedup(self, baseline: str, key: str) -> float:
        return median([b / x for b, x in zip(self.per_round[baseline], self.per_round[key], strict=True)])


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(x)) for x in [h, *(r[i] for r in rows)]) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def text_images(count: int, size: tuple[int, int], *, seed: int = 0, lines: int | None = None):
    """Rendered text (random words, four Hershey fonts, dark ink) on lightened crops of scikit-learn's two sample
    photographs, ImageNet normalisation, NCHW float32: what a text detector (several lines per image) or a text
    recogniser (`lines=1`, a line filling the height) sees. Real photographs, synthetic text."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    words = [
        "edge",
        "kit",
        "quantize",
        "latency",
        "model",
        "device",
        "int8",
        "float",
        "onnx",
        "runtime",
        "camera",
        "pipeline",
        "2026",
        "text",
        "OCR",
    ]
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    height, width = size
    out = np.empty((count, 3, height, width), np.float32)
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = int(rng.integers(0, photo.shape[0] - height)), int(rng.integers(0, photo.shape[1] - width))
        image = photo[y : y + height, x : x + width] * rng.uniform(0.2, 0.6) + rng.uniform(100, 200)
        image = image.clip(0, 255).astype(np.uint8)
        for _ in range(lines or int(rng.integers(2, 7))):
            text = " ".join(rng.choice(words, int(rng.integers(1, 4))))
            scale = height / 40 if lines == 1 else rng.uniform(0.4, 1.2) * height / 160
            origin = (int(rng.integers(0, width // 4 if lines == 1 else width // 2)),
                      int(height * 0.75) if lines == 1 else int(rng.integers(20, height)))  # fmt: skip
            ink = tuple(int(c) for c in rng.integers(0, 80, 3))
            font = fonts[int(rng.integers(len(fonts)))]
            cv2.putText(image, text, origin, font, scale, ink, max(1, int(scale * 2)), cv2.LINE_AA)
        out[i] = ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return out
