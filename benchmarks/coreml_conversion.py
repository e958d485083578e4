"""Core ML conversion time and artifact size per precision (ios-coreml target).

Models: the digits CNN (ONNX, through the ONNX replay), a MobileNetV2-style network (from its torch module)
and PaddleOCR's text-direction classifier from the rapidocr wheel (real pretrained weights, ONNX replay).
Anchors measured in the same run: size and build time against the fp32 build of the same model; the
time to export the torch model to ONNX (or load and check the ONNX file) is printed beside it. Medians
of --runs builds. Prediction needs macOS: no latency is reported here.

    .venv/bin/python benchmarks/coreml_conversion.py [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, paddleocr_model, print_table

PRECISIONS = ("fp32", "fp16", "w8", "w4", "w8a8")
DIGITS = Path(__file__).resolve().parents[1] / "edgekit" / "assets" / "digits_cnn.onnx"


def _models():
    import torch
    from mobilenet_v2 import mobilenet_v2

    from edgekit.model import Model

    def digits():
        return Model.load(DIGITS)

    def mobilenet():
        torch.manual_seed(0)
        net = mobilenet_v2(num_classes=1000).eval()
        return Model.from_torch(net, torch.zeros(1, 3, 224, 224), preprocess={"resize": [224, 224]})

    found = [("digits CNN (ONNX)", digits, (1, 1, 28, 28)), ("MobileNetV2 (torch)", mobilenet, (1, 3, 224, 224))]
    cls = paddleocr_model("cls")
    if cls is not None:
        found.append(
            ("PaddleOCR cls (ONNX)", lambda: Model.load(cls, preprocess={"resize": [48, 192]}), (1, 3, 48, 192))
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from edgekit.calibration.calibrate import calibrate
    from edgekit.targets import get_target

    target = get_target("ios-coreml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, make, shape in _models():
            anchor_times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                model = make()  # ONNX export (torch) or load + check (ONNX)
                anchor_times.append(time.perf_counter() - start)
            rng = np.random.default_rng(0)
            spec = calibrate(
                model, [rng.random(shape, dtype=np.float32) for _ in range(8)], activations="int8_sym", progress=False
            ).spec
            target.build(model, Path(tmp) / "warm", precision="fp16")  # imports and first-call costs
            sizes, times = {}, {}
            for precision in PRECISIONS:
                runs = []
                for run in range(args.runs):
                    start = time.perf_counter()
                    artifact = target.build(
                        model,
                        Path(tmp) / f"{precision}{run}",
                        precision=precision,
                        quant_spec=spec if precision == "w8a8" else None,
                    )
                    runs.append(time.perf_counter() - start)
                times[precision] = median(runs)
                sizes[precision] = artifact.model_path.stat().st_size
            anchor = median(anchor_times)
            for precision in PRECISIONS:
                size, seconds = sizes[precision], times[precision]
                rows.append(
                    [
                        label,
                        precision,
                        f"{size / 1e6:.3f}",
                        f"{size / sizes['fp32']:.2f}x",
                        f"{seconds:.2f}",
                        f"{seconds / times['fp32']:.2f}x",
                        f"{anchor:.3f}",
                    ]
                )
    print_table(
        "ios-coreml: package size and build time (medians)",
        ["model", "precision", "MB", "size vs fp32", "build s", "build vs fp32", "ONNX export/load s"],
        rows,
    )


if __name__ == "__main__":
    main()
