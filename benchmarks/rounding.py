"""Claim: AdaRound (learned weight rounding, calibration/adaround.py) beats round-to-nearest on real models,
in minutes on a CPU, alone and with bias correction.

Anchor: the same model calibrated with round-to-nearest, same calibration and held-out data, same run.
Models: the rapidocr wheel's PP-OCR det (320x320) and rec (48x320), and a MobileNetV2-style network with
seeded random weights and BatchNorm gains drawn as exp(N(0, 1)) (no pretrained weights are available
offline here). Schemes: uint8 activations with the x86-ort weights (int7 per channel) and int8 per channel.
Data: crops of real photographs, with rendered text for the PP-OCR models (32 to calibrate, of which AdaRound
and bias correction use 8; 16 held out).
Figures: output SQNR (dB, the worst output) against ONNX Runtime FP32 on the held-out crops; wall time of the
whole calibration (observers, AdaRound, bias correction).
Run: .venv/bin/python benchmarks/rounding.py [--models det,rec,mobilenetv2] [--weights int7_per_channel,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import paddleocr_model, print_table, text_images
from calibration_vs_ort import photo_crops
from detection import cpu_isa

VARIANTS = {
    "nearest": {},
    "adaround": {"rounding": "adaround"},
    "adaround + bias corr.": {"rounding": "adaround", "bias_correction": True, "bias_samples": 8},
}


def load_model(name: str):
    """(Model, input size) for a benchmark model name, or None when it is not installed."""
    from edgekit.model import Model

    if name == "mobilenetv2":
        import torch
        from mobilenet_v2 import mobilenet_v2

        torch.manual_seed(0)
        return Model.from_torch(mobilenet_v2(gamma_spread=1.0), torch.randn(1, 3, 224, 224)), (224, 224)
    path = paddleocr_model(name)
    return (Model.load(path), (320, 320) if name == "det" else (48, 320)) if path else None


def measure(model, size: tuple[int, int], weights: str, label: str) -> list[list[object]]:
    """One row per variant: SQNR vs FP32 on held-out crops, dB gained over nearest, seconds, layers learned."""
    from edgekit.calibration.calibrate import calibrate
    from edgekit.calibration.mixed_precision import Evaluator
    from edgekit.calibration.qdq import write_qdq

    name = model.inputs[0].name
    if label.startswith("PP-OCR"):  # text models see rendered text on photos; on a bare photo their output is ~0
        lines = 1 if size[0] == 48 else None
        calib, held = text_images(32, size, seed=1, lines=lines), text_images(16, size, seed=2, lines=lines)
    else:
        calib, held = photo_crops(32, size), photo_crops(16, size, seed=1)
    evaluator = Evaluator.for_sqnr(model.proto, [{name: held[i : i + 1]} for i in range(len(held))])
    rows, base = [], None
    for variant, options in VARIANTS.items():
        start = time.perf_counter()
        c = calibrate(model, calib, activations="uint8_asym", weights=weights, progress=False, **options)
        seconds = time.perf_counter() - start
        sqnr = evaluator(write_qdq(c.float_model, c.spec))
        base = sqnr if base is None else base
        learned = f"{sum(o.learned for o in c.rounding)}/{len(c.rounding)}" if c.rounding else "-"
        rows.append([label, weights, variant, f"{sqnr:.2f}", f"{sqnr - base:+.2f}", f"{seconds:.0f}", learned])
        print("  ".join(str(v) for v in rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="det,rec,mobilenetv2")
    parser.add_argument("--weights", default="int7_per_channel,int8_per_channel")
    args = parser.parse_args()
    print(f"CPU: {cpu_isa()}; {os.cpu_count()} cores")
    rows = []
    for name in args.models.split(","):
        loaded = load_model(name)
        if loaded is None:
            print(f"{name}: not installed (pip install rapidocr), skipped")
            continue
        model, size = loaded
        label = {"det": "PP-OCR det 320x320", "rec": "PP-OCR rec 48x320"}.get(name, "MobileNetV2-style (seeded)")
        for weights in args.weights.split(","):
            rows += measure(model, size, weights, label)
    print_table(
        "output SQNR vs ORT FP32 on 16 held-out photo crops, uint8 activations (dB; gain vs nearest, same run)",
        ["model", "weights", "rounding", "SQNR dB", "vs nearest", "calibration s", "AdaRound layers learned"],
        rows,
    )


if __name__ == "__main__":
    main()
