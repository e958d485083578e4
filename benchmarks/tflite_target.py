"""The android-tflite target on this CPU, each claim next to its anchor in the same run.

Models: the demo digits CNN (1,000 labelled held-out digits), a MobileNetV2-style network (width 0.5, 3x96x96,
random weights) and PaddleOCR's direction classifier from the rapidocr wheel (3x48x192); the last two get
crops of scikit-learn's two sample photos as inputs (256 for calibration, 64 held out for evaluation).

1. Conversion: seconds per precision and the peak RSS of a fresh process that imports TensorFlow and converts
   all three (anchor: the same process's RSS right after `import tensorflow`).
2. Latency, batch 1, one thread, median of interleaved rounds: LiteRT FP32/FP16/INT8 (XNNPACK) against ONNX
   Runtime FP32 (the anchor) and ONNX Runtime INT8 (x86-ort QDQ, its own scheme).
3. INT8 accuracy against FP32: top-1 on the digits (claim: drop <= 0.5 points), output SQNR elsewhere, with the
   QuantSpec (minmax and percentile observers) against TensorFlow's own converter calibration (anchor).

Run: .venv/bin/python benchmarks/tflite_target.py   (needs the tflite extra)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, ort_session, paddleocr_model, print_table

ROUNDS, RUNS = 7, 50


def models() -> dict[str, tuple]:
    """name -> (Model, calibration NCHW array, evaluation NCHW array, labels or None)."""
    import torch
    from mobilenet_v2 import mobilenet_v2

    from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
    from edgekit.model import Model

    digits, labels = preprocessed_heldout_digits()
    out = {"digits CNN": (Model.load(digits_model_path()), digits[:256], digits, labels)}
    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=10, width=0.5, gamma_spread=0.3).eval()
    mbv2 = Model.from_torch(net, torch.zeros(1, 3, 96, 96))
    crops = photo_crops(96, 96, 320)
    out["MobileNetV2-0.5"] = (mbv2, crops[:256], crops[256:], None)
    cls_path = paddleocr_model("cls")
    if cls_path is not None:
        cls = Model.load(cls_path)
        cls.preprocess = {"resize": [48, 192], "layout": "NCHW"}
        text = photo_crops(48, 192, 320, mean=0.5, std=0.5)
        out["PaddleOCR cls (real)"] = (cls, text[:256], text[256:], None)
    return out


def photo_crops(h: int, w: int, count: int, mean: float = 0.45, std: float = 0.25) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        crops.append(photo[y : y + h, x : x + w].transpose(2, 0, 1))
    return ((np.stack(crops).astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def convert_child(name: str) -> None:
    """In a fresh process: import TensorFlow, convert fp32/fp16/int8, print seconds and peak RSS as JSON."""
    from edgekit.calibration.calibrate import calibrate
    from edgekit.targets import get_target

    model, calib, _, _ = models()[name]
    spec = calibrate(model, calib, activations="int8_asym", weights="int8_per_channel", batch=32, progress=False).spec
    t = time.perf_counter()
    import tensorflow  # noqa: F401

    report = {"import_tf_s": time.perf_counter() - t, "rss_after_import_mb": _rss_mb()}
    target = get_target("android-tflite")
    for precision in ("fp32", "fp16", "int8"):
        t = time.perf_counter()
        target.build(
            model,
            Path("/tmp/edgekit-bench/tflite") / name.replace(" ", "_") / precision,
            precision=precision,
            quant_spec=spec if precision == "int8" else None,
        )
        report[precision] = time.perf_counter() - t
    report["peak_rss_mb"] = _rss_mb()
    print(json.dumps(report))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tflite_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    from edgekit.runtime.engines.tflite import TfliteEngine

    with TfliteEngine.from_bytes(data, {"threads": 1}) as engine:
        name = engine.input_names[0]
        return np.concatenate([engine.infer({name: x[i : i + 1].transpose(0, 2, 3, 1)})[0] for i in range(len(x))])


def latency_table(name: str, builds: dict[str, bytes], ort_builds: dict[str, bytes], sample: np.ndarray) -> list:
    from edgekit.runtime.engines.tflite import TfliteEngine

    runners = {}
    for label, data in builds.items():
        engine = TfliteEngine.from_bytes(data, {"threads": 1}).load()
        feed = {engine.input_names[0]: sample.transpose(0, 2, 3, 1)}
        runners[f"LiteRT {label}"] = lambda e=engine, f=feed: e.infer(f)
    for label, data in ort_builds.items():
        try:
            session = ort_session(data)
        except Exception as exc:  # report it, measure the rest
            print(f"   {name}: ORT {label} does not load: {str(exc).splitlines()[0][:160]}")
            continue
        feed = {session.get_inputs()[0].name: sample}
        runners[f"ORT {label}"] = lambda s=session, f=feed: s.run(None, f)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(ROUNDS):  # interleaved: drift on a shared machine hits every runner alike
        for label, run in runners.items():
            for _ in range(5):
                run()
            start = time.perf_counter()
            for _ in range(RUNS):
                run()
            times[label].append((time.perf_counter() - start) / RUNS * 1e3)
    anchor = median(times["ORT fp32"])
    return [[name, label, f"{median(v):.3f}", f"{anchor / median(v):.2f}x"] for label, v in times.items()]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--convert-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert_child:
        convert_child(args.convert_child)
        return

    from edgekit.calibration.calibrate import calibrate
    from edgekit.calibration.qdq import write_qdq
    from edgekit.runtime.compare import sqnr_db
    from edgekit.targets import get_target
    from edgekit.targets.onnx_to_tf import to_tflite

    all_models = models()
    conversion, latency, accuracy = [], [], []
    for name, (model, calib, evaluation, labels) in all_models.items():
        child = subprocess.run(
            [sys.executable, __file__, "--convert-child", name], capture_output=True, text=True, check=True
        )
        report = json.loads(child.stdout.strip().splitlines()[-1])
        conversion.append(
            [
                name,
                f"{report['fp32']:.2f}",
                f"{report['fp16']:.2f}",
                f"{report['int8']:.2f}",
                f"{report['import_tf_s']:.1f}",
                f"{report['rss_after_import_mb']:.0f}",
                f"{report['peak_rss_mb']:.0f}",
            ]
        )
        target = get_target("android-tflite")
        built = {}
        for observer in ("minmax", "percentile"):
            spec = calibrate(
                model,
                calib,
                observer=observer,
                activations="int8_asym",
                weights="int8_per_channel",
                batch=32,
                progress=False,
            ).spec
            art = target.build(model, Path(f"/tmp/edgekit-bench/tfl-{observer}"), precision="int8", quant_spec=spec)
            built[f"int8 QuantSpec {observer}"] = (art.path / "model.tflite").read_bytes()
        size = tuple(model.preprocess.resize) if model.preprocess and model.preprocess.resize else None
        fp32 = to_tflite(model.proto, size=size)
        fp16 = to_tflite(model.proto, fp16=True, size=size)
        built["int8 TF converter calibration"] = to_tflite(
            model.proto, size=size, converter_int8_data=[c[None] for c in calib]
        )
        x86 = calibrate(model, calib, batch=32, progress=False)
        ort_builds = {
            "fp32": model.to_bytes(),
            "int8 (x86-ort QDQ)": write_qdq(x86.float_model, x86.spec).SerializeToString(),
        }
        latency += latency_table(
            name, {"fp32": fp32, "fp16": fp16, "int8": built["int8 QuantSpec minmax"]}, ort_builds, evaluation[:1]
        )
        session = ort_session(model.to_bytes())
        reference = np.concatenate(
            [
                session.run(None, {session.get_inputs()[0].name: evaluation[i : i + 1]})[0]
                for i in range(len(evaluation))
            ]
        )
        float_out = tflite_outputs(fp32, evaluation)
        base = float((float_out.argmax(1) == labels).mean() * 100) if labels is not None else None
        for label, data in built.items():
            got = tflite_outputs(data, evaluation)
            if labels is not None:
                top1 = float((got.argmax(1) == labels).mean() * 100)
                accuracy.append(
                    [name, label, f"{base:.2f}", f"{top1:.2f}", f"{top1 - base:+.2f}", f"{sqnr_db(reference, got):.1f}"]
                )
            else:
                accuracy.append([name, label, "-", "-", "-", f"{sqnr_db(reference, got):.1f}"])
    print_table(
        "1. conversion (s) in a fresh process; RSS = peak resident MB (after `import tensorflow` = the anchor)",
        ["model", "fp32 s", "fp16 s", "int8 s (incl. mapping)", "import tf s", "RSS after import", "peak RSS"],
        conversion,
    )
    print_table(
        f"2. latency, batch 1, 1 thread, median of {ROUNDS} interleaved rounds x {RUNS} runs (ms); ORT fp32 / x",
        ["model", "runtime precision", "ms", "vs ORT fp32"],
        latency,
    )
    print_table(
        "3. INT8 accuracy vs FP32 (top-1 on 1,000 held-out digits; SQNR of the output vs ORT FP32, dB)",
        ["model", "int8 build", "fp32 top1", "int8 top1", "drop", "SQNR dB"],
        accuracy,
    )


if __name__ == "__main__":
    main()
