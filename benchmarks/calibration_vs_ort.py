"""Claims: edgekit's calibration is faster and leaner than ONNX Runtime's quantize_static, its memory
stays flat in the number of samples, its INT8 models are as accurate and at least as fast, and
accuracy budgets are met.

Anchor: `onnxruntime.quantization.quantize_static`, same float graph (BatchNorm folded, opset >= 13),
same samples, same QDQ format (uint8 activations, 7-bit per-channel weights: edgekit's x86-ort scheme
and ORT's reduce_range, both needed on CPUs without VNNI such as this one), measured in this run.
Every calibration runs in its own process, so its peak RSS (VmHWM) is its own. Inputs: held-out digits for the
digits CNN, photo crops for the MobileNetV2, rendered text on photos for PaddleOCR's text detector (on a photo with
no text its probability map is near zero and SQNR says nothing).
Run: .venv/bin/python benchmarks/calibration_vs_ort.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import WORK, median, paddleocr_model, print_table, text_images

HERE = Path(__file__).resolve().parent
OBSERVERS = ("minmax", "percentile", "entropy", "mse")
ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


# -- worker: one calibration in a fresh process --------------------------------------------------------


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    import onnx

    if args.data.startswith("generate:"):
        # samples made one at a time, so the data itself never sits in memory: peak RSS is the tool's own
        count = int(args.data.split(":")[1])
        data = (photo_crops(1, (224, 224), seed=1000 + i) for i in range(count))
    else:
        data = np.load(args.data, mmap_mode="r")
    start = time.perf_counter()
    if args.worker == "edgekit":
        from edgekit.calibration.calibrate import calibrate
        from edgekit.calibration.qdq import write_qdq
        from edgekit.model import Model

        model = Model.load(args.model)
        calibration = calibrate(model, data, observer=args.method, weights="int7_per_channel", progress=False)
        onnx.save(write_qdq(calibration.float_model, calibration.spec), args.out)
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        name = onnx.load(args.model, load_external_data=False).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.index = 0

            def get_next(self):
                if self.index >= len(data):
                    return None
                self.index += 1
                return {name: np.ascontiguousarray(data[self.index - 1 : self.index])}

        extra = {"CalibNumBins": 2048} if args.ort_bins else {}
        quantize_static(
            args.model,
            args.out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            calibrate_method=getattr(CalibrationMethod, args.method),
            extra_options=extra,
        )
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def run_worker(tool: str, model: Path, data: Path, method: str, out: Path, ort_bins: bool = False) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        tool,
        "--model",
        str(model),
        "--data",
        str(data),
        "--method",
        method,
        "--out",
        str(out),
    ] + (["--ort-bins"] if ort_bins else [])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- models and data -------------------------------------------------------------------------------------


def photo_crops(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Real photographs (scikit-learn's two sample images), random crops, ImageNet normalisation."""
    import cv2
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    out = np.empty((count, 3, *size), np.float32)
    for i in range(count):
        photo = photos[i % len(photos)]
        h = int(rng.integers(size[0] // 2, photo.shape[0]))
        w = min(photo.shape[1], max(8, int(h * size[1] / size[0])))
        y, x = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        crop = cv2.resize(photo[y : y + h, x : x + w], (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out[i] = ((crop.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return out


def prepared_model(name: str, proto, folder: Path) -> Path:
    """The float graph both tools quantize (edgekit's preparation: BN folded, opset >= 13)."""
    import onnx

    from edgekit.calibration.calibrate import prepare_float_model

    path = folder / f"{name}.onnx"
    onnx.save(prepare_float_model(proto), path)
    return path


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    s = session(path)
    name = s.get_inputs()[0].name
    return [s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]


def agreement(reference: list[np.ndarray], test: list[np.ndarray]) -> tuple[float, float]:
    from edgekit.runtime.compare import ErrorAccumulator

    acc = ErrorAccumulator()
    for r, t in zip(reference, test, strict=True):
        acc.update(r, t)
    s = acc.summary()
    return s["sqnr_db"], s["cosine"]


def latency_ms(path: Path, x: np.ndarray, runs: int) -> float:
    s = session(path)
    name = s.get_inputs()[0].name
    feed = {name: x[:1]}
    for _ in range(5):
        s.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        s.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))


# -- the benchmark ---------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from edgekit.model import Model

    sys.path.insert(0, str(HERE))
    from mobilenet_v2 import mobilenet_v2

    folder = WORK / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    if args.memory_only:
        if not (folder / "mobilenetv2.onnx").exists():
            prepared_model("mobilenetv2", Model.from_torch(mobilenet_v2(), torch.randn(1, 3, 224, 224)).proto, folder)
        rows = memory_flatness(folder, (16, 64) if args.quick else (64, 256, 1024))
        print_table(
            "peak memory vs number of calibration samples",
            ["model", "calibrator", "samples", "peak RSS MB", "seconds"],
            rows,
        )
        return
    samples = 16 if args.quick else 64
    runs = 50 if args.quick else 200

    digits_x, digits_y = digits_data()
    calib_rows, accuracy_rows, latency_rows, memory_rows = [], [], [], []
    for label, model_path, size in benchmark_cases(folder):
        if size is None:
            calib, evaluation, labels = digits_x[:samples], digits_x[samples:], digits_y[samples:]
        elif label.startswith("PaddleOCR"):  # a text detector: photos with rendered text, else its map is empty
            calib, evaluation, labels = text_images(samples, size, seed=1), text_images(32, size, seed=2), None
        else:
            calib, evaluation, labels = photo_crops(samples, size), photo_crops(32, size, seed=1), None
        data_path = folder / f"{model_path.stem}_{samples}.npy"
        np.save(data_path, calib)
        reference = outputs(model_path, evaluation)
        quantized = calibrate_all(label, model_path, data_path, folder, calib_rows)
        add_ratios_vs_ort(label, calib_rows)
        accuracy_rows += accuracy_table(label, quantized, reference, evaluation, labels)
        latency_rows += latency_table(label, model_path, quantized, evaluation, runs)

    memory_rows += memory_flatness(folder, (16, 64) if args.quick else (64, 256, 1024))

    print_table(
        f"calibration on {samples} samples: wall time and peak RSS (each in its own process)",
        ["model", "calibrator", "seconds", "peak RSS MB", "vs ORT (same method)"],
        calib_rows,
    )
    print_table(
        "accuracy vs FP32 (SQNR/cosine of the outputs on held-out inputs; top-1 on held-out digits)",
        ["model", "calibrator", "SQNR dB", "cosine", "fp32 top-1 %", "int8 top-1 %", "drop pts"],
        accuracy_rows,
    )
    latency_columns = ["model", "model file", "median ms", "speed-up vs fp32", "speed-up vs ORT int8"]
    print_table(f"latency, batch 1, median of 3 x {runs} runs (ms)", latency_columns, latency_rows)
    print_table(
        "peak memory vs number of calibration samples",
        ["model", "calibrator", "samples", "peak RSS MB", "seconds"],
        memory_rows,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=["edgekit", "ort"])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--method")
    parser.add_argument("--out")
    parser.add_argument("--ort-bins", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer samples and runs (a smoke test)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory-vs-samples table")
    return parser.parse_args()


def benchmark_cases(folder: Path) -> list[tuple[str, Path, tuple[int, int] | None]]:
    """The models: MobileNetV2-style (random weights), the demo's digits CNN, a real PaddleOCR model (when
    rapidocr is installed), each prepared in `folder`, with its input size (None: the digits' own data)."""
    import torch
    from mobilenet_v2 import mobilenet_v2

    from edgekit.demo_data import digits_model_path
    from edgekit.model import Model

    cases = []
    mobilenet = Model.from_torch(mobilenet_v2(), torch.randn(1, 3, 224, 224))
    cases.append(("MobileNetV2-style", prepared_model("mobilenetv2", mobilenet.proto, folder), (224, 224)))
    cases.append(("digits CNN", prepared_model("digits", Model.load(digits_model_path()).proto, folder), None))
    det = paddleocr_model("det")
    if det:
        cases.append(("PaddleOCR det", prepared_model("ppocr_det", Model.load(det).proto, folder), (320, 320)))
    return cases


def calibrate_all(
    label: str, model_path: Path, data_path: Path, folder: Path, calib_rows: list[list]
) -> dict[str, Path]:
    """Calibrate with every edgekit observer and ORT calibrator (each in its own process); a row per run in
    `calib_rows`, and the quantized model of each that succeeded."""
    quantized: dict[str, Path] = {}
    for tool, methods in (("edgekit", OBSERVERS), ("ort", ("minmax", "percentile", "entropy"))):
        for method in methods:
            variants = [False, True] if tool == "ort" and method == "entropy" else [False]
            for bins in variants:
                key = f"{tool} {method}" + (" (2048 bins)" if bins else "")
                out = folder / f"{model_path.stem}_{tool}_{method}{'_2048' if bins else ''}.onnx"
                ort_method = ORT_METHODS.get(method, method)
                stats = run_worker(tool, model_path, data_path, method if tool == "edgekit" else ort_method, out, bins)
                if "error" in stats:
                    calib_rows.append([label, key, "failed", stats["error"][:60], ""])
                    continue
                quantized[key] = out
                calib_rows.append([label, key, f"{stats['seconds']:.2f}", f"{stats['peak_rss_mb']:.0f}", ""])
    return quantized


def add_ratios_vs_ort(label: str, calib_rows: list[list]) -> None:
    """Fill the last column of edgekit's rows: the ratios against ORT's matching calibrator."""
    by_key = {(r[0], r[1]): r for r in calib_rows if r[2] != "failed"}
    for method in ("minmax", "percentile", "entropy"):
        ours, theirs = by_key.get((label, f"edgekit {method}")), by_key.get((label, f"ort {method}"))
        if ours and theirs:
            ours[4] = (
                f"{float(theirs[2]) / float(ours[2]):.1f}x faster, "
                f"{float(theirs[3]) / float(ours[3]):.1f}x less memory vs ORT {method}"
            )


def accuracy_table(
    label: str, quantized: dict[str, Path], reference: list, evaluation: np.ndarray, labels: np.ndarray | None
) -> list[list]:
    """SQNR and cosine of each quantized model's outputs against FP32, and top-1 where there are labels."""
    rows = []
    for key, path in quantized.items():
        test = outputs(path, evaluation)
        sqnr, cos = agreement(reference, test)
        row = [label, key, f"{sqnr:.1f}", f"{cos:.5f}"]
        if labels is not None:
            fp32 = np.mean([int(r.argmax()) == y for r, y in zip(reference, labels, strict=True)])
            q = np.mean([int(t.argmax()) == y for t, y in zip(test, labels, strict=True)])
            row += [f"{fp32 * 100:.2f}", f"{q * 100:.2f}", f"{(fp32 - q) * 100:+.2f}"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    return rows


def latency_table(
    label: str, model_path: Path, quantized: dict[str, Path], evaluation: np.ndarray, runs: int
) -> list[list]:
    """FP32 vs edgekit INT8 vs ORT INT8, in interleaved rounds."""
    contenders = {
        "fp32": model_path,
        "edgekit int8 (minmax)": quantized.get("edgekit minmax"),
        "ORT int8 (MinMax)": quantized.get("ort minmax"),
    }
    timing: dict[str, list[float]] = {k: [] for k, v in contenders.items() if v}
    for _ in range(3):
        for key in timing:
            timing[key].append(latency_ms(contenders[key], evaluation, runs))
    fp32_ms = median(timing["fp32"])
    rows = []
    for key, values in timing.items():
        ms = median(values)
        vs_ort = ""
        if key.startswith("edgekit") and "ORT int8 (MinMax)" in timing:
            vs_ort = f"{median(timing['ORT int8 (MinMax)']) / ms:.2f}"
        rows.append([label, key, f"{ms:.3f}", f"{fp32_ms / ms:.2f}", vs_ort])
    return rows


def memory_flatness(folder: Path, counts: tuple[int, ...]) -> list[list[object]]:
    """edgekit entropy on MobileNetV2 with 64..1,024 samples made on the fly (the data is not resident)."""
    rows = []
    for count in counts:
        stats = run_worker(
            "edgekit", folder / "mobilenetv2.onnx", Path(f"generate:{count}"), "entropy", folder / "flat.onnx"
        )
        rows.append(
            ["MobileNetV2-style", "edgekit entropy", count, f"{stats['peak_rss_mb']:.0f}", f"{stats['seconds']:.1f}"]
        )
    return rows


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from edgekit.demo_data import digits_model_path, load_heldout_digits
    from edgekit.model import Model
    from edgekit.runtime.preprocess import preprocess

    spec = Model.load(digits_model_path()).preprocess
    images, labels = load_heldout_digits()
    x = np.concatenate([preprocess(cv2.cvtColor(i, cv2.COLOR_GRAY2BGR), spec) for i in images])
    return x, labels.astype(int)


if __name__ == "__main__":
    main()
