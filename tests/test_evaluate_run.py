"""Scoring wired into edgekit.run / run_fleet, the CLI and the report. The agent's side of detection is
replaced by a transport that answers with hand-made task_output, so these tests check the host: checks
before the run, the reference run stored and linked, scores stored with the run, nothing half-stored."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console
from test_evaluate import perfect_output, shifted_output, write_coco

import edgekit
from edgekit import api, report
from edgekit.api import build
from edgekit.cli import main
from edgekit.device.local import LocalTransport
from edgekit.device.results import validate_result
from edgekit.errors import EvaluationError
from edgekit.model import Model
from edgekit.runtime.result import RESULT_SCHEMA, RESULT_VERSION
from edgekit.store import ResultsStore


def fake_result(plan: dict, task_output: dict | None, status: str = "ok") -> dict:
    frames = len((task_output or {}).get("frames") or [])
    result = validate_result(
        {
            "schema": RESULT_SCHEMA,
            "version": RESULT_VERSION,
            "run_id": plan["run_id"],
            "status": status,
            "mode": plan["mode"],
            "frames": {"timed": frames, "warmup": 0, "dropped": 0},
            "errors": [] if status == "ok" else [{"stage": "engine", "message": "the engine broke"}],
        },
        run_id=plan["run_id"],
    )
    return {**result, "task_output": task_output}


class FakeAgent:
    """Stands in for LocalTransport.run: the reference artifact (in the cache) finds every box, the artifact
    under test the shifted ones; `main` replaces what the artifact under test returns."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.plans: list[dict] = []
        self.main: dict | None = shifted_output()
        self.reference_status = "ok"

    def run(self, transport, artifact, plan, *, timeout_s=3600.0, progress=None):
        self.plans.append(plan)
        if self.cache in artifact.path.parents:
            return fake_result(plan, perfect_output(), self.reference_status)
        return fake_result(plan, self.main)


@pytest.fixture
def agent(tmp_path, monkeypatch) -> FakeAgent:
    """A detect task in every plan, reference artifacts cached under tmp_path, and the fake agent."""
    make_plan = api.make_plan

    def detect_plan(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        return {**plan, "postprocess": {"kind": "detect", "conf": 0.25, "iou": 0.45, "max_det": 300}}

    monkeypatch.setattr(api, "make_plan", detect_plan)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = FakeAgent(tmp_path / "cache")
    monkeypatch.setattr(LocalTransport, "run", lambda self, *a, **k: fake.run(self, *a, **k))
    return fake


@pytest.fixture
def artifact(classifier_path, tmp_path):
    return build(Model.load(classifier_path, class_names=["cat", "dog"]), "x86-ort", tmp_path / "art")


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return folder


def test_run_scores_labels_and_reference_and_stores_both(agent, artifact, frames, classifier_path, tmp_path):
    coco = write_coco(tmp_path / "coco.json")
    saved = tmp_path / "out" / "detections.jsonl"
    record = edgekit.run(artifact, frames, annotations=coco, reference=classifier_path, save_detections=saved, warmup=0)
    reference_plan, plan = agent.plans
    assert plan["postprocess"]["keep_outputs"] and reference_plan["postprocess"] == plan["postprocess"]
    assert reference_plan["source"] == plan["source"] and reference_plan["mode"] == "sequential"

    accuracy = record.result["accuracy"]
    assert accuracy["kind"] == "detect"
    labels, versus = accuracy["labels"], accuracy["reference"]
    assert labels["computed_on"] == versus["computed_on"] == "host"
    assert 0 < labels["map"] < 1 and labels["images"] == 3 and labels["categories_by"] == "name"
    assert versus["map50"] < 1 and versus["run_id"] == reference_plan["run_id"] and versus["matched"] == 3
    assert record.result["errors"] == []

    stored = {r.run_id: r for r in ResultsStore().get()}
    assert set(stored) == {plan["run_id"], reference_plan["run_id"]}
    assert stored[plan["run_id"]].result["accuracy"] == accuracy
    assert stored[reference_plan["run_id"]].result["task_output"] == perfect_output()
    assert stored[reference_plan["run_id"]].precision == "fp32"

    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2]
    assert lines[1]["boxes"] == shifted_output()["frames"][1]["boxes"] and lines[0]["run_id"] == record.run_id


def test_the_reference_build_is_cached_by_content(agent, artifact, frames, classifier_path, tmp_path):
    edgekit.run(artifact, frames, reference=classifier_path, warmup=0)
    built = list((tmp_path / "cache" / "edgekit" / "reference").iterdir())
    stamp = (built[0] / "manifest.json").stat().st_mtime_ns
    edgekit.run(artifact, frames, reference=str(classifier_path), warmup=0)
    assert list((tmp_path / "cache" / "edgekit" / "reference").iterdir()) == built
    assert (built[0] / "manifest.json").stat().st_mtime_ns == stamp
    # an artifact folder is used as it is
    edgekit.run(artifact, frames, reference=built[0], warmup=0)
    assert Path(agent.plans[-2]["artifact_dir"]) == built[0].resolve()


def test_bad_input_is_refused_before_anything_runs(agent, artifact, frames, tmp_path):
    bad = write_coco(tmp_path / "bad.json", {"a.png": [(7, [2, 2, 5, 5])], "zzz.png": []})
    with pytest.raises(EvaluationError, match="'zzz.png' is not in the source folder"):
        edgekit.run(artifact, frames, annotations=bad)
    with pytest.raises(EvaluationError, match="neither an artifact folder nor a model file"):
        edgekit.run(artifact, frames, reference=tmp_path / "missing.onnx")
    assert agent.plans == [] and ResultsStore().get() == []


def test_scoring_needs_a_box_task(artifact, frames, tmp_path):
    with pytest.raises(EvaluationError, match="need a detect or text-detect task; this run's task is"):
        edgekit.run(artifact, frames, annotations=write_coco(tmp_path / "coco.json"))


def test_a_failed_evaluation_is_stored_with_the_run(agent, artifact, frames, classifier_path, tmp_path):
    agent.main = None  # an agent that returned no detections
    agent.reference_status = "error"
    record = edgekit.run(artifact, frames, annotations=write_coco(tmp_path / "coco.json"), reference=classifier_path)
    messages = [e["message"] for e in record.result["errors"] if e["stage"] == "evaluate"]
    assert len(messages) == 2 and "no per-frame detections" in messages[0]
    assert "the FP32 reference run" in messages[1] and "the engine broke" in messages[1]
    assert record.result["status"] == "ok" and record.result["accuracy"] is None
    stored = ResultsStore().get([record.run_id])[0]
    assert stored.result["errors"] == record.result["errors"]


def test_empty_detections_warn_in_the_stored_result(agent, artifact, frames):
    agent.main = {"kind": "detect", "frames": [{"frame": i, "size": [48, 64], "boxes": []} for i in range(3)]}
    record = edgekit.run(artifact, frames, save_detections=frames.parent / "d.jsonl")
    assert any("no detections on any of the 3 frames" in w for w in record.result["warnings"])
    assert "no detections" in ResultsStore().get([record.run_id])[0].result["warnings"][0]


def test_cli_prints_map_and_reference(agent, artifact, frames, classifier_path, tmp_path):
    coco = write_coco(tmp_path / "coco.json")
    args = ["run", str(artifact.path), "-s", str(frames), "--annotations", str(coco), "--reference"]
    ran = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args, str(classifier_path)], catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    assert "mAP@0.5:0.95" in ran.output and "on 3 labelled images" in ran.output
    assert "vs the FP32 reference (run " in ran.output and "detections per frame 1.33 (reference 1)" in ran.output
    run_id = ran.output.split("stored in")[-2].split("run ")[-1].split()[0]
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["report", run_id], catch_exceptions=False)
    assert "mAP@0.5:0.95" in shown.output and "vs the FP32 reference" in shown.output  # one run: its scores too

    agent.main = None
    failed = CliRunner().invoke(main, [*args, str(classifier_path)], catch_exceptions=False)
    assert failed.exit_code == 1 and "evaluate error:" in failed.output

    bad = write_coco(tmp_path / "bad.json", {"zzz.png": []})
    refused = CliRunner().invoke(main, ["run", str(artifact.path), "-s", str(frames), "--annotations", str(bad)])
    assert refused.exit_code == 2 and refused.output.count("error:") == 1 and "Traceback" not in refused.output


def test_run_fleet_scores_each_device(agent, artifact, frames, classifier_path, tmp_path, monkeypatch):
    import edgekit.device.ssh as ssh

    class FakeSsh:
        def __init__(self, device, trust_on_first_use=False):
            self.device = device

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def run(self, artifact, plan, *, timeout_s=3600.0, progress=None):
            return fake_result(plan, shifted_output() if self.device.name == "a" else perfect_output())

    monkeypatch.setattr(ssh, "SshTransport", FakeSsh)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[device]]\nname = "a"\nhost = "h1"\n[[device]]\nname = "b"\nhost = "h2"\n')
    saved = tmp_path / "dets.jsonl"
    records = api.run_fleet(
        artifact,
        fleet,
        str(frames),
        annotations=write_coco(tmp_path / "coco.json"),
        reference=classifier_path,
        save_detections=saved,
    )
    assert len(agent.plans) == 1  # the reference runs once, here
    by_device = {r.device: r.result["accuracy"] for r in records}
    assert by_device["a"]["labels"]["map"] < 1 and by_device["b"]["labels"]["map"] == 1.0
    assert by_device["b"]["reference"]["map"] == 1.0 and by_device["a"]["reference"]["map"] < 1
    assert (tmp_path / "dets.a.jsonl").is_file() and (tmp_path / "dets.b.jsonl").is_file()
    stored = {r.device: r for r in ResultsStore().get()}
    assert stored["a"].result["accuracy"] == by_device["a"] and "local" in stored


def test_report_shows_task_metrics_and_frames_with_boxes(agent, artifact, frames, classifier_path, tmp_path):
    coco = write_coco(tmp_path / "coco.json")
    record = edgekit.run(artifact, frames, annotations=coco, reference=classifier_path, warmup=0)
    runs = ResultsStore().get()

    rows = list(csv.DictReader(io.StringIO(report.to_csv(runs))))
    ours = next(r for r in rows if r["run_id"] == record.run_id)
    assert ours["task"] == "detect" and 0 < float(ours["map"]) < 1 and float(ours["ref_map50"]) < 1
    assert float(ours["detections_per_frame"]) == pytest.approx(4 / 3)

    console = Console(record=True, width=200)
    report.print_runs_table(runs, console)
    table = console.export_text()
    assert "mAP50" in table and "det/" in table and "detect" in table

    page = report.to_html(runs)
    assert page.count("<img") == 4  # two frames for each of the two runs
    assert "data:image/png;base64," in page and "mAP@0.5 against the FP32 reference" in page

    # the frames are gone from this host: a note instead of pictures
    for path in frames.iterdir():
        path.unlink()
    frames.rmdir()
    page = report.to_html(ResultsStore().get([record.run_id]))
    assert "<img" not in page and "is not on this host" in page


def test_runs_without_task_metrics_keep_their_columns(classifier_path, tmp_path):
    store = ResultsStore()
    plan = {"run_id": "r1", "mode": "sequential", "postprocess": {"kind": "classification"}}
    result = {**fake_result(plan, None), "accuracy": {"kind": "classification", "top1": 0.5, "count": 2}}
    store.add(device="local", plan=plan, result=result, manifest={"target": "x86-ort"}, artifact_id="f" * 64)
    header = report.to_csv(store.get()).splitlines()[0]
    assert "map" not in header.split(",") and "task" not in header.split(",")
