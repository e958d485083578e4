"""The x86-openvino target on this CPU against ONNX Runtime FP32 (the anchor), all measured in one run.

Models: PaddleOCR's text detector from the rapidocr wheel at 3x320x320 (real weights) and a MobileNetV2
(benchmarks/mobilenet_v2.py, seeded weights with spread BatchNorm gains) at 3x224x224. Inputs: crops of
scikit-learn's two sample photographs (64 to calibrate, 16 held out). One QuantSpec per model, calibrated for
x86-ort (uint8 activations, 7-bit per-channel weights, percentile observer), builds both INT8 artifacts.

Latency, batch 1, at 1 thread and at all threads: rounds that visit every runtime in turn (each visit a fresh
session or compiled model, warm-up, then timed runs; the median per visit), so drift on a shared machine hits
them alike; medians over rounds, and ratios to ORT FP32 paired round by round. Runtimes: ORT FP32 (source
model), ORT INT8 (our x86-ort artifact, QDQ), OpenVINO FP32 and OpenVINO INT8 (our x86-openvino IR, compiled as
the agent's engine compiles it, hint f32). SQNR of each against ORT FP32 on the held-out crops. The goal:
OpenVINO INT8 <= 0.25x ORT FP32 latency. Where NNCF is installed (`pip install nncf`; not a dependency of
edgekit), OpenVINO's own post-training quantizer (`nncf.quantize`, defaults, same 64 crops) is the INT8 anchor,
timed in the same rounds.

Run: .venv/bin/python benchmarks/openvino_target.py [--quick]   (needs the openvino extra)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Interleaved, median, paddleocr_model, print_table  # noqa: E402
from calibration_vs_ort import photo_crops  # noqa: E402
from detection import cpu_isa  # noqa: E402

NNCF = "OV INT8 (NNCF anchor)"


def models() -> list[tuple[str, object, tuple[int, int]]]:
    """(name, Model with a preprocessing spec at its size, (height, width))."""
    import torch
    from mobilenet_v2 import mobilenet_v2

    from edgekit.model import Model

    found = []
    det = paddleocr_model("det")
    if det is not None:
        model = Model.load(det)
        model.preprocess = {"resize": [320, 320], "layout": "NCHW"}
        found.append(("PP-OCR det 320x320 (real)", model, (320, 320)))
    else:
        print("rapidocr is not installed: PP-OCR det skipped (pip install rapidocr)")
    torch.manual_seed(0)
    net = mobilenet_v2(gamma_spread=0.3).eval()
    model = Model.from_torch(net, torch.zeros(1, 3, 224, 224))
    model.preprocess = {"resize": [224, 224], "layout": "NCHW"}
    found.append(("MobileNetV2 224x224", model, (224, 224)))
    return found


def build(model, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    """The x86-ort INT8 artifact and the x86-openvino FP32/INT8 artifacts from one x86-ort QuantSpec."""
    from edgekit.calibration.calibrate import calibrate
    from edgekit.targets import get_target

    ort_target, ov_target = get_target("x86-ort"), get_target("x86-openvino")
    spec = calibrate(
        model,
        calibration,
        observer="percentile",
        activations=ort_target.activation_scheme,
        weights=ort_target.weight_scheme,
        progress=False,
    ).spec
    started = time.perf_counter()
    artifacts = {
        "ORT INT8 (x86-ort)": ort_target.build(model, folder / "ort_int8", precision="int8", quant_spec=spec),
        "OV FP32 (x86-openvino)": ov_target.build(model, folder / "ov_fp32", precision="fp32"),
        "OV INT8 (x86-openvino)": ov_target.build(model, folder / "ov_int8", precision="int8", quant_spec=spec),
    }
    print(f"  built in {time.perf_counter() - started:.1f} s")
    anchor = nncf_int8(model, calibration, folder / "nncf")
    for name, artifact in artifacts.items():
        validation = artifact.manifest["validation"]
        verdict = "passed" if validation.get("passed") else f"OUTSIDE BUDGET (SQNR {validation.get('sqnr_db')} dB)"
        print(f"  {name}: validation {verdict} on {validation['probes']['source']}; ran {validation['ran']}")
    paths = {name: artifact.model_path for name, artifact in artifacts.items()}
    return {**paths, NNCF: anchor} if anchor else paths


def nncf_int8(model, calibration: np.ndarray, folder: Path) -> Path | None:
    """OpenVINO's own INT8 (NNCF post-training quantization with its defaults) of the source model, or None
    when NNCF is not installed."""
    try:
        import nncf
    except ImportError:
        print("  nncf is not installed: no OpenVINO-quantizer anchor (pip install nncf)")
        return None
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.onnx").write_bytes(model.to_bytes())
    started = time.perf_counter()
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(ov.Core().read_model(folder / "source.onnx"), dataset, subset_size=len(calibration))
    ov.save_model(quantized, folder / "model.xml")
    print(f"  NNCF {nncf.__version__} quantized in {time.perf_counter() - started:.1f} s")
    return folder / "model.xml"


def open_runner(name: str, source: Path, paths: dict[str, Path], threads: int):
    """A callable feed -> outputs through the agent's own engines (what the device runs)."""
    from edgekit.runtime.engines import open_engine

    if name.startswith("OV"):
        options = {"threads": threads, "inference_precision": "f32", "streams": 1}
        engine = open_engine("openvino", str(paths[name]), options)
    else:
        path = source if name == "ORT FP32" else paths[name]
        engine = open_engine("onnxruntime", str(path), {"threads": threads, "inter_op_threads": 1})
    return engine


def latency(
    source: Path, paths: dict[str, Path], sample: np.ndarray, threads: int, rounds: int, runs: int
) -> Interleaved:
    per_round: dict[str, list[float]] = {name: [] for name in ["ORT FP32", *paths]}
    for _ in range(rounds):
        for name in per_round:
            engine = open_runner(name, source, paths, threads)
            feed = {engine.input_names[0]: sample}
            for _ in range(10):
                engine.infer(feed)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                engine.infer(feed)
                times.append(time.perf_counter() - start)
            engine.close()
            per_round[name].append(median(times) * 1e3)
    return Interleaved(per_round)


def sqnr(source: Path, paths: dict[str, Path], held: np.ndarray) -> dict[str, float]:
    """SQNR (dB) of every output of each runtime against ORT FP32, pooled over the held-out crops."""
    from edgekit.runtime.compare import ErrorAccumulator

    def outputs(name: str) -> list[list[np.ndarray]]:
        engine = open_runner(name, source, paths, threads=os.cpu_count() or 1)
        with engine:
            return [engine.infer({engine.input_names[0]: x[None]}) for x in held]

    reference = outputs("ORT FP32")
    figures = {}
    for name in paths:
        accumulator = ErrorAccumulator()
        for ref, got in zip(reference, outputs(name), strict=True):
            for r, g in zip(ref, got, strict=True):
                accumulator.update(r, g)
        figures[name] = accumulator.summary()["sqnr_db"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and runs (a smoke test)")
    args = parser.parse_args()
    rounds, runs = (2, 10) if args.quick else (5, 30)
    import onnxruntime
    import openvino

    from edgekit.targets.openvino import cpu_capabilities

    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_isa()}; OpenVINO capabilities: {', '.join(cpu_capabilities())}; {cores} logical cores")
    print(f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}; {rounds} rounds x {runs} runs")
    rows, goals = [], []
    with tempfile.TemporaryDirectory() as work:
        for label, model, size in models():
            print(f"{label}:")
            folder = Path(work) / label.split()[0]
            source = folder / "source.onnx"
            folder.mkdir(parents=True)
            source.write_bytes(model.to_bytes())
            paths = build(model, photo_crops(64, size), folder)
            held = photo_crops(16, size, seed=1)
            figures = sqnr(source, paths, held)
            for threads in sorted({1, cores}):
                timing = latency(source, paths, held[:1], threads, rounds, runs)
                for name in ["ORT FP32", *paths]:
                    ratio = 1.0 if name == "ORT FP32" else 1.0 / timing.speedup("ORT FP32", name)
                    db = figures.get(name)
                    rows.append(
                        [
                            label,
                            name,
                            threads,
                            f"{timing.ms(name):.2f}",
                            f"{ratio:.3f}",
                            "-" if db is None else f"{db:.1f}",
                        ]
                    )
                ov_int8 = 1.0 / timing.speedup("ORT FP32", "OV INT8 (x86-openvino)")
                ov_vs_ort_int8 = 1.0 / timing.speedup("ORT INT8 (x86-ort)", "OV INT8 (x86-openvino)")
                anchor = f"; OV INT8 / NNCF's = {1.0 / timing.speedup(NNCF, 'OV INT8 (x86-openvino)'):.3f}"
                goals.append(
                    f"{label}, {threads} thread(s): OV INT8 / ORT FP32 = {ov_int8:.3f} (goal <= 0.25: "
                    f"{'met' if ov_int8 <= 0.25 else 'not met'}); OV INT8 / ORT INT8 = {ov_vs_ort_int8:.3f}"
                    + (anchor if NNCF in paths else "")
                )
    print_table(
        "latency, batch 1 (median ms over rounds; ratio to ORT FP32 paired round by round) and SQNR vs ORT FP32",
        ["model", "runtime", "threads", "median ms", "x ORT FP32", "SQNR dB"],
        rows,
    )
    print()
    print("\n".join(goals))


if __name__ == "__main__":
    main()
