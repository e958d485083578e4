"""Every pass of quantization reports its steps: a callback sees done = 1..N of each pass, and the CLI's
bars stay out of a log."""

from __future__ import annotations

from collections import defaultdict

import pytest
from click.testing import CliRunner

from edgekit.calibration.progress import pass_progress
from edgekit.calibration.quantize import quantize
from edgekit.cli import main
from edgekit.demo_data import digits_model_path, preprocessed_heldout_digits
from edgekit.model import Model
from edgekit.targets import get_target


def _record() -> tuple[dict[str, list[tuple[int, int | None]]], object]:
    seen: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
    return seen, lambda name, done, total: seen[name].append((done, total))


def _counts_up(steps: list[tuple[int, int | None]]) -> bool:
    return [done for done, _ in steps] == list(range(1, len(steps) + 1))


def test_calibration_error_sensitivity_and_budget_passes_count_their_steps() -> None:
    images, labels = preprocessed_heldout_digits(40)
    model = Model.load(digits_model_path())
    feeds = [{model.inputs[0].name: images[i : i + 1]} for i in range(24, 40)]
    seen, callback = _record()
    # a budget no fully int8 model meets here, so the sensitivity sweep and the budget search both run
    result = quantize(model, images[:24], eval_feeds=feeds, min_sqnr=45.0, progress=callback)
    assert result.budget is not None
    assert seen["calibration samples"] == [(i, 24) for i in range(1, 25)]
    assert seen["per-tensor error"] == [(i, 16) for i in range(1, 17)]
    sweep = seen["sensitivity: one layer int8 at a time"]
    assert sweep and all(total == len(sweep) for _, total in sweep) and _counts_up(sweep)
    budget = seen["accuracy budget: layers kept float"]
    assert budget and _counts_up(budget) and len(budget) == len(result.budget.history)


def test_the_latency_plan_counts_every_configuration_it_times() -> None:
    images, _ = preprocessed_heldout_digits(40)
    model = Model.load(digits_model_path())
    feeds = [{model.inputs[0].name: images[i : i + 1]} for i in range(24, 28)]
    seen, callback = _record()
    target = get_target("x86-ort")
    result = quantize(model, images[:24], eval_feeds=feeds, latency_plan=target.timed_model, progress=callback)
    steps = seen["latency plan: configurations timed"]
    assert _counts_up(steps) and len(steps) == len(result.precision_plan.points)
    assert steps[-1][0] == steps[-1][1]  # the last step completes the bar


def test_a_silent_pass_and_a_bar_both_count() -> None:
    with pass_progress("quiet", 3, False) as quiet:
        for _ in range(3):
            quiet.advance()
    with pass_progress("drawn", None, True) as drawn:
        drawn.advance()
        drawn.total = 1
    assert (quiet.done, drawn.done, drawn.total) == (3, 1, 1)


@pytest.mark.parametrize("flags", [[], ["--min-sqnr", "45"]])
def test_quantize_in_a_log_prints_no_bar(tmp_path, flags) -> None:
    images, _ = preprocessed_heldout_digits(8)
    import numpy as np

    np.save(tmp_path / "calib.npy", images)
    out = tmp_path / "q"
    result = CliRunner().invoke(
        main, ["quantize", str(digits_model_path()), "--calib", str(tmp_path / "calib.npy"), "-o", str(out), *flags]
    )
    assert result.exit_code == 0, result.output
    assert "calibration samples" not in result.output and not result.output.startswith("\n")
