"""The fleet runner with local devices: parallel runs, each failure kept to its own device."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np

from edgekit.api import build
from edgekit.device.local import LocalTransport
from edgekit.device.plan import Source, make_plan
from edgekit.device.settings import RunSettings
from edgekit.fleet.runner import run_fleet
from edgekit.model import Model
from edgekit.store import ResultsStore


def test_healthy_devices_finish_while_a_broken_one_fails_alone(classifier_path, tmp_path, isolated_store):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (32, 32))
    for i in range(8):
        writer.write(np.full((32, 32, 3), i * 30, np.uint8))
    writer.release()
    artifact = build(Model.load(classifier_path), "x86-ort", tmp_path / "art")
    devices = [SimpleNamespace(name=f"box{i}", python=None) for i in range(3)]
    devices.append(SimpleNamespace(name="broken", python="/nonexistent/python3"))

    def transport_for(device):
        return LocalTransport(device.python) if device.python else LocalTransport()

    def plan_for(device, run_id):
        return make_plan(str(artifact.path), Source.parse(str(video)), RunSettings(warmup=1), run_id=run_id)

    done = []
    records = run_fleet(
        artifact,
        devices,
        plan_for,
        transport_for,
        timeout_s=60,
        store=ResultsStore(isolated_store),
        on_done=done.append,
    )
    assert [r.device for r in records] == ["box0", "box1", "box2", "broken"]
    assert [r.ok for r in records] == [True, True, True, False]
    assert "broken" in records[3].result["errors"][0]["message"]
    assert all(r.result["frames"]["timed"] == 8 for r in records[:3])
    assert len(done) == 4
    assert sorted(r.device for r in ResultsStore(isolated_store).get()) == ["box0", "box1", "box2", "broken"]
