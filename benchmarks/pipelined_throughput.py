"""Claim: pipelined mode reaches at least 0.9 of 1/max(stage time) and beats sequential mode.

Anchor: the bound 1/max(stage p50) computed from the sequential run of the same artifact and video in
the same session, and the sequential throughput itself. Workload: a real pretrained PaddleOCR model
(rapidocr wheel) on a 640x480 video, one inference thread so the other stages have a core to run on.
Run: .venv/bin/python benchmarks/pipelined_throughput.py [--rounds 3]
"""

from __future__ import annotations

import argparse

from _common import WORK, digits_video, median, paddleocr_model, print_table

from edgekit.api import build, run
from edgekit.demo_data import digits_model_path
from edgekit.model import Model

STAGES = ("capture", "preprocess", "inference", "postprocess")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    video, _ = digits_video((480, 640))
    cases = []
    det = paddleocr_model("det")
    if det:
        spec = {"resize": [320, 320], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        cases.append((f"PaddleOCR det 320x320 ({det.name})", Model.load(det, preprocess=spec)))
    rec = paddleocr_model("rec")
    if rec:
        cases.append((f"PaddleOCR rec 48x320 ({rec.name})", Model.load(rec, preprocess={"resize": [48, 320]})))
    cases.append(("digits CNN (tiny: Python overhead dominates)", Model.load(digits_model_path())))

    rows = []
    for label, model in cases:
        artifact = build(model, "x86-ort", WORK / f"pipe-{abs(hash(label))}")
        seq_fps, pipe_fps, bounds, stage_rows = [], [], [], []
        for _ in range(args.rounds):
            seq = run(artifact, video, frames=args.frames, loop=True, threads=args.threads, save=False).result
            pipe = run(
                artifact, video, frames=args.frames, loop=True, threads=args.threads, pipelined=True, save=False
            ).result
            stage_ms = {s: seq["latency_ms"][s]["p50"] for s in STAGES}
            bounds.append(1000.0 / max(stage_ms.values()))
            seq_fps.append(seq["throughput_fps"])
            pipe_fps.append(pipe["throughput_fps"])
            stage_rows.append(stage_ms)
        bound, s_fps, p_fps = median(bounds), median(seq_fps), median(pipe_fps)
        slowest = max(STAGES, key=lambda s: median([r[s] for r in stage_rows]))
        stages = " / ".join(f"{median([r[s] for r in stage_rows]):.2f}" for s in STAGES)
        verdict = "PASS" if p_fps >= 0.9 * bound and p_fps > s_fps else "FAIL"
        rows.append(
            [
                label,
                stages,
                slowest,
                f"{bound:.1f}",
                f"{s_fps:.1f}",
                f"{p_fps:.1f}",
                f"{p_fps / bound:.2f}",
                f"{p_fps / s_fps:.2f}",
                verdict,
            ]
        )
    print_table(
        f"throughput (frames/s), median of {args.rounds} rounds x {args.frames} frames, {args.threads} inference "
        "thread(s); stages = capture / preprocess / inference / postprocess p50 ms from the sequential run",
        [
            "model",
            "stages ms",
            "slowest",
            "bound 1/max",
            "sequential",
            "pipelined",
            "pipe/bound",
            "pipe/seq",
            "verdict",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
