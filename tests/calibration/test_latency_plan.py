"""The latency-aware precision plan on a real model: every configuration timed in ONNX Runtime here and scored,
the front, the choice by budget, and the CLI around it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.calibration.calibrate import calibrate
from edgekit.calibration.latency_plan import Point, pareto_front, plan_precision, split_regions
from edgekit.calibration.mixed_precision import Evaluator
from edgekit.cli import main
from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
from edgekit.model import Model
from edgekit.targets import get_target


def test_regions_are_contiguous_and_cover_every_node() -> None:
    nodes = [f"n{i}" for i in range(10)]
    regions = split_regions(nodes, 4)
    assert [n for r in regions for n in r] == nodes and len(regions) == 4
    assert split_regions(nodes[:2], 8) == [["n0"], ["n1"]]


def test_the_front_keeps_only_points_nothing_beats() -> None:
    points = [Point("a", (), 1.0, 10.0), Point("b", (1,), 2.0, 9.0), Point("c", (2,), 3.0, 12.0)]
    assert [p.label for p in pareto_front(points)] == ["a", "c"]


@pytest.fixture(scope="module")
def digits_calibration():
    images, _ = preprocessed_heldout_digits(48)
    model = Model.load(digits_model_path())
    return model, images, calibrate(model, images[:32], progress=False)


def test_the_plan_times_every_configuration_and_meets_the_budget(digits_calibration) -> None:
    model, images, calibration = digits_calibration
    feeds = [{model.inputs[0].name: images[i : i + 1]} for i in range(32, 48)]
    evaluate = Evaluator.for_sqnr(calibration.float_model, feeds)
    target = get_target("x86-ort")
    best_possible = 30.0
    plan = plan_precision(
        calibration.float_model, calibration.spec, calibration.plan.nodes, evaluate,
        lambda spec: target.timed_model(calibration.float_model, spec), feeds[0], target=best_possible, regions=3,
        runs=5,
    )  # fmt: skip
    assert len(plan.regions) == 3 and plan.int8 in plan.points and plan.fp32 in plan.points
    singles = [p for p in plan.points if p.label.startswith("region")]
    assert len(singles) == 3
    assert all(p.latency_ms > 0 and np.isfinite(p.score) for p in plan.points if p is not plan.fp32)
    assert plan.chosen.score >= best_possible or not plan.met
    assert plan.slower_than_fp32 == (plan.chosen.latency_ms > plan.fp32.latency_ms)
    # the chosen configuration is the fastest measured one meeting the budget, or, when even that is slower than
    # FP32 (the digits CNN is tiny: quantizers cost more than they save), every region float
    meeting = [p for p in plan.points if p is not plan.fp32 and p.score >= best_possible]
    if plan.int8_does_not_pay:
        assert plan.chosen is plan.fp32 and plan.chosen.float_regions == (0, 1, 2) and not plan.slower_than_fp32
        assert all(p.latency_ms > plan.fp32.latency_ms for p in meeting)
    elif meeting:
        assert plan.chosen.latency_ms <= min(p.latency_ms for p in meeting)
    assert plan.chosen in plan.front or plan.chosen.score <= max(p.score for p in plan.front)
    assert json.dumps(plan.to_dict(), allow_nan=False)


def test_quantize_latency_plan_writes_the_front_into_the_report(tmp_path) -> None:
    images, _ = preprocessed_heldout_digits(24)
    calib = tmp_path / "calib.npy"
    np.save(calib, images)
    args = ["quantize", str(digits_model_path()), "--calib", str(calib), "--latency-plan", "-o", str(tmp_path / "q")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "latency plan" in result.output and "(chosen)" in result.output
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["precision_plan"]["chosen"]["latency_ms"] > 0 and report["precision_plan"]["front"]
    spec = json.loads((tmp_path / "q" / "quant_spec.json").read_text())
    assert spec["calibration"]["precision_plan"]["chosen"] == report["precision_plan"]["chosen"]["label"]


def test_latency_plan_is_refused_for_targets_whose_engine_is_not_here(tmp_path) -> None:
    args = ["quantize", str(digits_model_path()), "--calib", str(tmp_path), "-t", "android-tflite", "--latency-plan"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "q")])
    assert result.exit_code != 0 and "does not run here" in result.output
