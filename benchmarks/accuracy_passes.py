"""Claim: cross-layer equalization and bias correction help a depthwise network.

Anchor: the same network quantized without them, same calibration and held-out data, same run.
Network: MobileNetV2-style with ReLU (CLE needs a positively homogeneous activation) and BatchNorm
gains drawn as exp(N(0, 1)), the per-channel imbalance BatchNorm folding leaves in trained networks.
Data: crops of real photographs. Figure: SQNR (dB) of the logits against FP32.
Run: .venv/bin/python benchmarks/accuracy_passes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table
from calibration_vs_ort import photo_crops
from mobilenet_v2 import mobilenet_v2


def main() -> None:
    import torch

    from edgekit.calibration.calibrate import calibrate
    from edgekit.calibration.mixed_precision import Evaluator
    from edgekit.calibration.qdq import write_qdq
    from edgekit.model import Model

    model = Model.from_torch(mobilenet_v2(activation="relu", gamma_spread=1.0), torch.randn(1, 3, 224, 224))
    calib, held = photo_crops(32, (224, 224)), photo_crops(16, (224, 224), seed=1)
    evaluator = Evaluator.for_sqnr(model.proto, [{"input": held[i : i + 1]} for i in range(len(held))])
    rows = []
    for weights in ("int7_per_tensor", "int7_per_channel"):  # 7-bit: this AVX2 CPU saturates u8 x s8 pairs
        scores = []
        for options in ({}, {"equalize": True}, {"equalize": True, "bias_correction": True}):
            c = calibrate(model, calib, weights=weights, progress=False, **options)
            scores.append(evaluator(write_qdq(c.float_model, c.spec)))
        rows.append(
            [weights, *(f"{s:.1f}" for s in scores), f"{scores[1] - scores[0]:+.1f}", f"{scores[2] - scores[1]:+.1f}"]
        )
    print_table(
        "logits SQNR vs FP32 (dB), MobileNetV2-style (ReLU, imbalanced channels), uint8 activations",
        ["weights", "plain", "CLE", "CLE + bias corr.", "CLE gain", "bias corr. gain"],
        rows,
    )


if __name__ == "__main__":
    main()
