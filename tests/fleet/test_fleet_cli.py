"""`edgekit run --fleet` and `edgekit devices check` against a real sshd on loopback."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgekit.cli import main
from edgekit.store import ResultsStore


def test_fleet_run_and_device_check(sshd, tmp_path, digits_artifact, digits_video, isolated_store, write_fleet):
    fleet = tmp_path / "fleet.toml"
    write_fleet(fleet, sshd, tmp_path)
    runner = CliRunner(env={"COLUMNS": "200"})

    checked = runner.invoke(main, ["devices", "check", "--fleet", str(fleet), "--json"])
    facts = {f["name"]: f for f in json.loads(checked.output)}
    assert checked.exit_code == 1  # one device is unreachable
    assert facts["box-a"]["reachable"] and "onnxruntime" in facts["box-a"]["engines"]
    assert not facts["gone"]["reachable"] and facts["gone"]["error"]

    video, labels = digits_video
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(labels))
    ran = runner.invoke(
        main,
        [
            "run",
            str(digits_artifact.path),
            "--fleet",
            str(fleet),
            "--tags",
            "lab",
            "--source",
            str(video),
            "--labels",
            str(labels_file),
            "--warmup",
            "2",
        ],
    )
    assert ran.exit_code == 1, ran.output  # the unreachable device fails alone
    assert "box-a: ok" in ran.output and "box-b: ok" in ran.output and "gone: error" in ran.output
    assert "failed on 1 of 3 devices: gone: run error (" in ran.output
    stored = {r.device: r for r in ResultsStore(isolated_store).get()}
    assert set(stored) == {"box-a", "box-b", "gone"}
    assert stored["box-a"].result["accuracy"]["top1"] > 0.9
    assert stored["gone"].status == "error"
