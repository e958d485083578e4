"""`edgekit run --fleet` with scoring: the demo detector on two loopback devices over a real sshd, each
device's detections scored on the host against labels and the FP32 reference, and a failed evaluation on
one device making the run fail while every result stays stored."""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from edgekit.api import build
from edgekit.cli import main
from edgekit.demo_data import detector_model_path, render_detection_frames
from edgekit.store import ResultsStore


def write_fleet(path, sshd, tmp_path, names) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_entry())
    path.write_text(
        "\n".join(
            f'[[device]]\nname = "{name}"\nhost = "{sshd.host}"\nport = {sshd.port}\nuser = "{sshd.user}"\n'
            f'key = "{sshd.client_key}"\nknown_hosts = "{known_hosts}"\nworkdir = "{tmp_path / name}"\n'
            f'python = "{sys.executable}"\ntarget = "x86-ort"\n'
            for name in names
        )
    )


def test_a_failed_evaluation_on_one_device_fails_the_fleet_run(sshd, tmp_path, isolated_store, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the reference build is this test's own
    frames, annotations = render_detection_frames(tmp_path / "frames", 8)
    artifact = build(detector_model_path(), "x86-ort", tmp_path / "art")
    fleet = tmp_path / "fleet.toml"
    write_fleet(fleet, sshd, tmp_path, ["box-a", "box-b"])
    (tmp_path / "dets.box-b.jsonl").mkdir()  # box-b's detections cannot be written: its evaluation fails
    args = ["run", str(artifact.path), "--fleet", str(fleet), "--source", str(frames), "--warmup", "0"]
    scoring = ["--annotations", str(annotations), "--reference", str(detector_model_path())]
    ran = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, [*args, *scoring, "--save-detections", str(tmp_path / "dets.jsonl")]
    )

    assert ran.exit_code == 1, ran.output  # both devices ran ("ok"); one could not be scored in full
    assert "box-a: ok (run" in ran.output and "box-b: ok, evaluation failed (run" in ran.output
    [summary] = [line for line in ran.output.splitlines() if line.startswith("failed on")]
    assert summary.startswith("failed on 1 of 2 devices: box-b: evaluation failed (cannot write detections to ")
    assert "dets.box-b.jsonl" in summary and "box-a" not in summary

    stored = {r.device: r for r in ResultsStore(isolated_store).get()}
    assert set(stored) == {"box-a", "box-b", "local"}  # the FP32 reference ran once, here
    reference_run = stored["local"].run_id
    for device in ("box-a", "box-b"):
        accuracy = stored[device].result["accuracy"]
        assert accuracy["labels"]["images"] == 8 and accuracy["labels"]["map50"] > 0.8
        # the same FP32 model on the same frames: the reference's boxes exactly
        assert accuracy["reference"]["run_id"] == reference_run
        assert accuracy["reference"]["map"] == accuracy["reference"]["miou"] == 1.0
    assert stored["box-a"].result["errors"] == []
    [error] = stored["box-b"].result["errors"]
    assert error["stage"] == "evaluate" and "cannot write detections" in error["message"]

    lines = [json.loads(line) for line in (tmp_path / "dets.box-a.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(8))
    assert {line["run_id"] for line in lines} == {stored["box-a"].run_id}
    assert not (tmp_path / "dets.jsonl").exists()
