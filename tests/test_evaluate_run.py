"""Scoring wired into edgekit.run, the CLI and the report, through the real agent: the shipped demo digit
detector (FP32 and INT8 x86-ort builds) on frames of held-out MNIST digits with exact COCO boxes. Checked
here: what is refused before the run, the FP32 reference run built (cached), run, stored and linked, the
scores stored with the run, a failed evaluation stored with it, never half-stored.

The fleet path (run_fleet over a real sshd) is in tests/fleet/test_fleet_evaluate.py; a result whose
task_output a hostile device dropped is in tests/test_results_validation.py (the agent cannot make one)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import edgekit
from edgekit import report
from edgekit.api import build
from edgekit.cli import main
from edgekit.demo_data import detector_model_path, digits_model_path, render_detection_frames
from edgekit.errors import EvaluationError
from edgekit.model import Model
from edgekit.store import ResultsStore

FRAMES = 12


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 PNG frames of 1-4 held-out digits each and their exact COCO annotations (frames.coco.json)."""
    return render_detection_frames(tmp_path_factory.mktemp("detect") / "frames", FRAMES)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory):
    return build(detector_model_path(), "x86-ort", tmp_path_factory.mktemp("fp32") / "art")


@pytest.fixture(scope="module")
def int8(tmp_path_factory: pytest.TempPathFactory, frames):
    folder, _ = frames
    out = tmp_path_factory.mktemp("int8") / "art"
    return build(detector_model_path(), "x86-ort", out, precision="int8", calib=folder, observer="percentile")


@pytest.fixture(autouse=True)
def reference_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Reference builds go to this test's own cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "edgekit" / "reference"


def coco_with(annotations: Path, out: Path, *, images: list = (), boxes: list = (), categories: list = ()) -> Path:
    """The rendered annotations with entries added (to make them wrong)."""
    data = json.loads(annotations.read_text())
    data["images"] += list(images)
    data["annotations"] += list(boxes)
    data["categories"] += list(categories)
    out.write_text(json.dumps(data))
    return out


def test_int8_run_scores_labels_and_reference_and_stores_both(int8, frames, tmp_path):
    folder, annotations = frames
    saved = tmp_path / "out" / "detections.jsonl"
    record = edgekit.run(
        int8, folder, annotations=annotations, reference=detector_model_path(), save_detections=saved, warmup=0
    )
    assert record.result["status"] == "ok" and record.result["errors"] == [] and record.result["warnings"] == []
    accuracy = record.result["accuracy"]
    assert accuracy["kind"] == "detect"
    labels, versus = accuracy["labels"], accuracy["reference"]
    assert labels["computed_on"] == versus["computed_on"] == "host"
    boxes = len(json.loads(annotations.read_text())["annotations"])
    assert labels["images"] == FRAMES and labels["boxes"] == boxes and labels["categories_by"] == "name"
    assert 0.6 < labels["map"] < labels["map50"] <= 1  # the INT8 demo detector finds the held-out digits
    # INT8 keeps the FP32 detections (a class-aware match for each) but moves their boxes a little
    assert versus["map50"] > 0.9 and 0.9 < versus["miou"] < 1 and versus["frames"] == FRAMES
    assert versus["matched"] >= 0.9 * versus["reference_detections_per_frame"] * FRAMES

    stored = {r.run_id: r for r in ResultsStore().get()}
    reference = stored[versus["run_id"]]
    assert set(stored) == {record.run_id, reference.run_id}
    assert stored[record.run_id].result["accuracy"] == accuracy
    assert reference.precision == "fp32" and reference.result["status"] == "ok"
    assert versus["artifact_id"] == reference.artifact_id != int8.id
    plan = record.plan
    assert plan["postprocess"]["keep_outputs"] and reference.plan["postprocess"] == plan["postprocess"]
    assert reference.plan["source"] == plan["source"] and reference.plan["mode"] == "sequential"
    assert len(reference.result["task_output"]["frames"]) == FRAMES

    frames_out = record.result["task_output"]["frames"]
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert all(line["run_id"] == record.run_id and line["size"] == [160, 160] for line in lines)
    assert [line["boxes"] for line in lines] == [frame["boxes"] for frame in frames_out]


def test_the_reference_build_is_cached_by_content(fp32, frames, reference_cache):
    folder, _ = frames
    first = edgekit.run(fp32, folder, reference=detector_model_path(), warmup=0)
    # the FP32 artifact against its own model's reference build: the same boxes exactly
    versus = first.result["accuracy"]["reference"]
    assert versus["map"] == versus["map50"] == versus["miou"] == 1.0
    assert versus["detections_per_frame"] == versus["reference_detections_per_frame"] > 0
    [built] = list(reference_cache.iterdir())
    stamp = (built / "manifest.json").stat().st_mtime_ns

    again = edgekit.run(fp32, folder, reference=str(detector_model_path()), warmup=0)
    assert list(reference_cache.iterdir()) == [built] and (built / "manifest.json").stat().st_mtime_ns == stamp
    assert again.result["accuracy"]["reference"]["artifact_id"] == versus["artifact_id"]
    reference_run = ResultsStore().get([again.result["accuracy"]["reference"]["run_id"]])[0]
    assert Path(reference_run.plan["artifact_dir"]) == built.resolve()
    # an artifact folder given as the reference is used as it is: test_a_failed_evaluation_is_stored_with_the_run


def test_an_nhwc_artifact_is_scored_against_the_nchw_onnx_reference(frames, tmp_path):
    """android-tflite takes NHWC; the reference build of the ONNX model keeps its own NCHW layout and the
    artifact's other preprocessing (it failed on every frame when it took the artifact's layout)."""
    for module in ("tensorflow", "ai_edge_litert"):
        pytest.importorskip(module, reason="needs the tflite extra (pip install 'edgekit[tflite]')")
    folder, _ = frames
    artifact = build(detector_model_path(), "android-tflite", tmp_path / "tflite")
    assert artifact.manifest["preprocess"]["layout"] == "NHWC"
    record = edgekit.run(artifact, folder, reference=detector_model_path(), warmup=0, frames=4)
    assert record.result["errors"] == []
    versus = record.result["accuracy"]["reference"]
    assert versus["map50"] > 0.95 and versus["frames"] == 4


def test_bad_input_is_refused_before_anything_runs(fp32, frames, tmp_path, reference_cache):
    folder, annotations = frames
    saved = tmp_path / "dets.jsonl"
    missing = coco_with(annotations, tmp_path / "missing.json", images=[{"id": 99, "file_name": "zzz.png"}])
    with pytest.raises(EvaluationError, match="'zzz.png' is not in the source folder"):
        edgekit.run(fp32, folder, annotations=missing, reference=detector_model_path(), save_detections=saved)
    # a box of a category the model does not have (the detector knows the digits 0-9)
    beyond = coco_with(
        annotations,
        tmp_path / "beyond.json",
        boxes=[{"id": 999, "image_id": 1, "category_id": 10, "bbox": [1, 1, 5, 5], "iscrowd": 0}],
        categories=[{"id": 10, "name": "10"}],
    )
    with pytest.raises(EvaluationError, match=r"category '10' \(id 10, 1 boxes\) .* beyond the model's 10 classes"):
        edgekit.run(fp32, folder, annotations=beyond, reference=detector_model_path(), save_detections=saved)
    with pytest.raises(EvaluationError, match="neither an artifact folder nor a model file"):
        edgekit.run(fp32, folder, annotations=annotations, reference=tmp_path / "missing.onnx")
    assert ResultsStore().get() == [] and not saved.exists() and not reference_cache.exists()


def test_scoring_needs_a_box_task(classifier_path, frames, tmp_path):
    artifact = build(Model.load(classifier_path), "x86-ort", tmp_path / "art")
    with pytest.raises(EvaluationError, match="need a detect or text-detect task; this run's task is 'classify'"):
        edgekit.run(artifact, frames[0], annotations=frames[1])
    assert ResultsStore().get() == []


def test_a_failed_evaluation_is_stored_with_the_run(fp32, frames, tmp_path):
    folder, annotations = frames
    # a wrong reference: the demo's digit classifier, whose outputs the detect task refuses on the device
    wrong = build(digits_model_path(), "x86-ort", tmp_path / "classifier")
    blocked = tmp_path / "dets.jsonl"
    blocked.mkdir()  # the detections cannot be written there
    record = edgekit.run(fp32, folder, annotations=annotations, reference=wrong.path, save_detections=blocked)
    assert record.result["status"] == "ok"
    messages = [e["message"] for e in record.result["errors"] if e["stage"] == "evaluate"]
    assert len(messages) == 2 and messages == [e["message"] for e in record.result["errors"]]
    assert messages[0].startswith("the FP32 reference run ") and "the model's outputs are [?, 10]" in messages[0]
    assert f"cannot write detections to {blocked}" in messages[1]
    assert set(record.result["accuracy"]) == {"kind", "count", "detections", "per_frame_mean", "labels"}

    stored = {r.run_id: r for r in ResultsStore().get()}
    assert stored[record.run_id].result == record.result  # stored once, whole, with what failed
    [reference] = [r for r in stored.values() if r.run_id != record.run_id]
    assert reference.status == "error" and reference.artifact_id == wrong.id  # the folder, used as it is
    assert Path(reference.plan["artifact_dir"]) == wrong.path.resolve()


def test_empty_detections_warn_in_the_stored_result(fp32, frames, tmp_path):
    folder, _ = frames
    saved = tmp_path / "dets.jsonl"
    record = edgekit.run(fp32, folder, task={"conf": 0.999}, save_detections=saved, warmup=0)  # too strict
    [warning] = record.result["warnings"]
    assert f"no detections on any of the {FRAMES} frames" in warning and "conf 0.999" in warning
    assert "preprocessing" in warning and "colour order" in warning
    assert ResultsStore().get([record.run_id])[0].result["warnings"] == [warning]
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(lines) == FRAMES and all(line["boxes"] == [] for line in lines)


def test_cli_prints_map_and_reference_and_exits_1_when_scoring_fails(int8, frames, tmp_path):
    folder, annotations = frames
    runner = CliRunner(env={"COLUMNS": "200"})
    args = ["run", str(int8.path), "-s", str(folder), "--warmup", "0", "--annotations", str(annotations)]
    ran = runner.invoke(main, [*args, "--reference", str(detector_model_path())], catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    run_id = ran.output.split("stored in")[-2].split("run ")[-1].split()[0]
    stored = ResultsStore().get([run_id])[0]
    labels, versus = stored.result["accuracy"]["labels"], stored.result["accuracy"]["reference"]
    # the report's number format: 3 significant digits
    assert f"mAP@0.5:0.95 {labels['map']:.3g}, mAP@0.5 {labels['map50']:.3g}" in ran.output
    assert f"on {FRAMES} labelled images" in ran.output
    assert f"vs the FP32 reference (run {versus['run_id']}): mAP@0.5 {versus['map50']:.3g}" in ran.output
    per_frame = f"{versus['detections_per_frame']:.3g} (reference {versus['reference_detections_per_frame']:.3g})"
    assert f"detections per frame {per_frame}" in ran.output
    shown = runner.invoke(main, ["report", run_id], catch_exceptions=False)
    assert shown.exit_code == 0 and "mAP@0.5:0.95" in shown.output and "vs the FP32 reference" in shown.output

    (tmp_path / "a-file").write_text("")
    blocked = tmp_path / "a-file" / "dets.jsonl"  # its folder cannot be made
    failed = runner.invoke(main, [*args, "--save-detections", str(blocked)], catch_exceptions=False)
    assert failed.exit_code == 1 and "evaluate error: cannot write detections" in failed.output
    assert "mAP@0.5:0.95" in failed.output  # what was scored is printed (and stored) all the same

    bad = coco_with(annotations, tmp_path / "bad.json", images=[{"id": 99, "file_name": "zzz.png"}])
    refused = runner.invoke(main, ["run", str(int8.path), "-s", str(folder), "--annotations", str(bad)])
    assert refused.exit_code == 2 and refused.output.count("error:") == 1 and "Traceback" not in refused.output
    assert len(ResultsStore().get()) == 3  # two runs and the one reference run; nothing of the refused one


def test_report_shows_task_metrics_and_frames_with_boxes(int8, frames, tmp_path):
    folder = Path(shutil.copytree(frames[0], tmp_path / "frames"))
    record = edgekit.run(int8, folder, annotations=frames[1], reference=detector_model_path(), warmup=0)
    runs = ResultsStore().get()

    rows = list(csv.DictReader(io.StringIO(report.to_csv(runs))))
    ours = next(r for r in rows if r["run_id"] == record.run_id)
    labels, versus = record.result["accuracy"]["labels"], record.result["accuracy"]["reference"]
    assert ours["task"] == "detect" and float(ours["map"]) == pytest.approx(labels["map"])
    assert float(ours["ref_map50"]) == pytest.approx(versus["map50"])
    assert float(ours["detections_per_frame"]) == pytest.approx(versus["detections_per_frame"])

    console = Console(record=True, width=200)
    report.print_runs_table(runs, console)
    table = console.export_text()
    assert "mAP " in table and "detect" in table  # the task's headline figure (mAP against the labels)

    page = report.to_html(runs)
    assert page.count("<img") == 4  # two frames for each of the two runs (ours and the reference)
    assert "data:image/png;base64," in page and "mAP@0.5 against the FP32 reference" in page  # its column title

    # the frames are gone from this host: a note instead of pictures
    shutil.rmtree(folder)
    page = report.to_html(ResultsStore().get([record.run_id]))
    assert "<img" not in page and "is not on this host" in page


def test_runs_without_task_metrics_keep_their_columns(classifier_path, frames, tmp_path):
    artifact = build(Model.load(classifier_path), "x86-ort", tmp_path / "art")
    record = edgekit.run(artifact, frames[0], warmup=0)
    assert record.result["status"] == "ok" and record.result["task_output"] is None
    header = report.to_csv(ResultsStore().get()).splitlines()[0].split(",")
    assert "map" not in header and "task" in header  # every row names its task; no empty metric columns
