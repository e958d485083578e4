"""Claim: the agent's harness adds at most 5% to inference latency.

Anchor: a bare `session.run` loop over the same model, the same preprocessed frames of the same video,
the same session options and threads, measured in the same run. Rounds alternate which side goes
first; each round gives a ratio of p50s, and the figure is the median of those ratios (this shared
machine drifts by 30% between minutes, so only paired rounds are comparable).
Run: .venv/bin/python benchmarks/harness_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import WORK, digits_video, median, paddleocr_model, print_table

from edgekit.api import build, run
from edgekit.demo_data import digits_model_path
from edgekit.model import Model


def bare_loop_p50(model_path, spec, video, frames: int, threads: int | None) -> float:
    import cv2
    import onnxruntime as ort

    from edgekit.runtime.preprocess import preprocess

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    capture = cv2.VideoCapture(str(video))
    samples = []
    warm = 10
    while len(samples) < frames:
        ok, frame = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        feed = {name: preprocess(frame, spec)}
        start = time.perf_counter()
        session.run(None, feed)
        elapsed = (time.perf_counter() - start) * 1000.0
        if warm:
            warm -= 1
        else:
            samples.append(elapsed)
    capture.release()
    return float(np.percentile(samples, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    video, _ = digits_video((112, 112))
    cases = [("digits CNN (shipped)", Model.load(digits_model_path()))]
    for kind, preprocess in (
        ("cls", {"resize": [48, 192], "mean": [0.5], "std": [0.5]}),
        ("rec", {"resize": [48, 320], "mean": [0.5], "std": [0.5]}),
    ):
        path = paddleocr_model(kind)
        if path:
            cases.append((f"PaddleOCR {kind} ({path.name})", Model.load(path, preprocess=preprocess)))
        else:
            print(f"(PaddleOCR {kind} skipped: pip install rapidocr)")

    rows = []
    for label, model in cases:
        artifact = build(model, "x86-ort", WORK / f"overhead-{abs(hash(label))}")
        agent, bare, ratios = [], [], []
        for round_index in range(args.rounds):
            pair = {}
            for side in ("agent", "bare") if round_index % 2 == 0 else ("bare", "agent"):
                if side == "agent":
                    record = run(artifact, video, frames=args.frames, loop=True, threads=args.threads, save=False)
                    pair[side] = record.result["latency_ms"]["inference"]["p50"]
                else:
                    pair[side] = bare_loop_p50(artifact.model_path, model.preprocess, video, args.frames, args.threads)
            agent.append(pair["agent"])
            bare.append(pair["bare"])
            ratios.append(pair["agent"] / pair["bare"])
        ratio = median(ratios)
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        rows.append(
            [
                label,
                f"{median(bare):.4f}",
                f"{median(agent):.4f}",
                f"{ratio:.3f}",
                spread,
                "PASS" if ratio <= 1.05 else "FAIL",
            ]
        )
    print_table(
        f"inference p50 (ms), {args.rounds} paired rounds x {args.frames} frames; target: median ratio <= 1.05",
        ["model", "bare session.run", "agent", "agent / bare (median)", "range", "verdict"],
        rows,
    )


if __name__ == "__main__":
    main()
