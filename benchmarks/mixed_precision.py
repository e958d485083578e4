"""Claim: accuracy-budgeted mixed precision meets the budget with few layers left in float.

Anchor: the fully quantized model (no layer in float) with the same calibration, same run.
Cases: the digits CNN with the entropy observer (whose clipping costs top-1 on sparse digit images)
under --max-drop 0.3 points on held-out digits; the real PaddleOCR det model under --min-sqnr.
Run: .venv/bin/python benchmarks/mixed_precision.py [--min-sqnr 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import paddleocr_model, print_table
from calibration_vs_ort import digits_data, photo_crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--min-sqnr", type=float, default=20.0)
    args = parser.parse_args()

    from edgekit.calibration.quantize import quantize
    from edgekit.demo_data import digits_model_path
    from edgekit.model import Model

    rows = []
    x, y = digits_data()
    feeds = [{"input": x[i : i + 1]} for i in range(64, len(x))]
    start = time.perf_counter()
    result = quantize(
        Model.load(digits_model_path()),
        x[:64],
        observer="entropy",
        weights="int7_per_channel",
        eval_feeds=feeds,
        eval_labels=[int(v) for v in y[64:]],
        max_drop=0.3,
        progress=False,
    )
    budget = result.budget
    rows.append(
        [
            "digits CNN, entropy",
            "top-1 drop <= 0.3 pts",
            f"{budget.history[0]['score'] * 100:.2f}% top-1",
            f"{budget.score * 100:.2f}% (fp32 {result.accuracy['float_top1'] * 100:.2f}%)",
            f"{len(budget.float_nodes)} of {len(result.sensitivity) or '?'}",
            str(budget.met),
            f"{time.perf_counter() - start:.1f}",
        ]
    )

    det = paddleocr_model("det")
    if det:
        model = Model.load(det)
        calib, held = photo_crops(32, (320, 320)), photo_crops(8, (320, 320), seed=1)
        start = time.perf_counter()
        result = quantize(
            model,
            calib,
            observer="minmax",
            weights="int7_per_channel",
            eval_feeds=[{"x": held[i : i + 1]} for i in range(len(held))],
            min_sqnr=args.min_sqnr,
            progress=False,
        )
        budget = result.budget
        rows.append(
            [
                f"PaddleOCR det ({det.name}), minmax",
                f"output SQNR >= {args.min_sqnr:g} dB",
                f"{budget.history[0]['score']:.1f} dB",
                f"{budget.score:.1f} dB",
                f"{len(budget.float_nodes)} of {len(result.sensitivity)}",
                str(budget.met),
                f"{time.perf_counter() - start:.1f}",
            ]
        )
    print_table(
        "accuracy-budgeted mixed precision (uint8 activations, 7-bit per-channel weights)",
        ["model", "budget", "all int8", "with budget", "nodes kept float", "met", "seconds"],
        rows,
    )


if __name__ == "__main__":
    main()
