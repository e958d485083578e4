"""The latency plan timed on a fleet device: `edgekit quantize --latency-device NAME --fleet FILE` times every
candidate with the agent over the real sshd, records which device timed it, and leaves nothing behind there."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
from edgekit.device.timing import parse_timing
from edgekit.errors import DeviceError


def test_quantize_times_the_latency_plan_on_a_fleet_device(sshd, tmp_path, write_fleet):
    fleet = tmp_path / "fleet.toml"
    write_fleet(fleet, sshd, tmp_path)
    images, _ = preprocessed_heldout_digits(24)
    calib = tmp_path / "calib.npy"
    np.save(calib, images)
    args = ["quantize", str(digits_model_path()), "--calib", str(calib), "--latency-device", "box-a"]
    result = CliRunner().invoke(main, [*args, "--fleet", str(fleet), "-o", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "timed on box-a" in result.output and "(chosen)" in result.output
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    plan = report["precision_plan"]
    assert plan["timed_on"] == "box-a" and plan["fp32"]["latency_ms"] > 0 and len(plan["points"]) >= 3
    spec = json.loads((tmp_path / "q" / "quant_spec.json").read_text())
    assert spec["calibration"]["precision_plan"]["timed_on"] == "box-a"
    assert os.listdir(tmp_path / "box-a" / "runs") == []  # the timing folder and its candidates removed


def test_a_device_without_fleet_file_and_bad_answers_are_refused(tmp_path):
    args = ["quantize", str(digits_model_path()), "--calib", str(tmp_path), "--latency-device", "box-a"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "q")])
    assert result.exit_code != 0 and "--latency-device needs --fleet" in result.output
    assert parse_timing('noise\n{"median_ms": 1.5, "runs": 15}\n', "d", 15) == 1.5
    for answer in ("", "[]", '{"median_ms": -1, "runs": 15}', '{"median_ms": NaN, "runs": 15}',
                   '{"median_ms": true, "runs": 15}', '{"median_ms": 1.0, "runs": 3}'):  # fmt: skip
        with pytest.raises(DeviceError, match="timing answer is not usable"):
            parse_timing(answer, "d", 15)
