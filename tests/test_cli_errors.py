"""Every command, given bad input, says so in one `error:` line with exit code 2 and no traceback.

A library error (an EdgekitError: bad model, bad setting, bad data, bad fleet file) goes through the CLI's
`fail_cleanly`; a bad flag is click's own usage error. Inputs are cheap (missing or corrupt files, empty
folders, zero epochs), so the whole file runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edgekit.cli import main
from edgekit.cli.common import parse_key_values
from edgekit.demo_data import digits_model_path
from edgekit.errors import CalibrationError, CompressError, EdgekitError

NO_BN_NET = '''
from torch import nn

def net():
    """A digits-sized classifier without BatchNorm: --criterion bn_gamma cannot score its channels."""
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
'''


@pytest.fixture
def bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detector_factory) -> Path:
    """A folder of bad inputs, and a good .npy, model module and detector with no task beside them."""
    detector_factory(tmp_path / "detector.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    (tmp_path / "corrupt.db").write_text("this is not an SQLite database, not even its header")
    (tmp_path / "fleet.toml").write_text('[[device]\nname = "a"\n')
    (tmp_path / "spec.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "calib.npy", np.zeros((2, 1, 28, 28), np.float32))
    (tmp_path / "nets_without_bn.py").write_text(NO_BN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def model() -> str:
    return str(digits_model_path())


def artifact(folder: Path) -> Path:
    """A good x86-ort artifact of the demo digits model (under a second to build)."""
    from edgekit.api import build

    return Path(build(model(), "x86-ort", folder / "art").path)


def detector_artifact(folder: Path) -> Path:
    """An x86-ort artifact of a YOLO-shaped model with no task in its metadata."""
    from edgekit.api import build

    return Path(build(folder / "detector.onnx", "x86-ort", folder / "detector-art").path)


# (id, arguments given the bad-input folder T, a phrase the error line holds)
LIBRARY_ERRORS = [
    ("inspect-missing-model", lambda t: ["inspect", t / "gone.onnx"], "gone.onnx does not exist"),
    ("inspect-shape-without-equals", lambda t: ["inspect", model(), "--shape", "x"], "--shape 'x': write KEY=VALUE"),
    ("inspect-shape-not-integers", lambda t: ["inspect", model(), "--shape", "x=1,a"], "integer dims"),
    ("inspect-unknown-target", lambda t: ["inspect", model(), "-t", "nope"], "nope"),
    (
        "quantize-setting-without-equals",
        lambda t: ["quantize", model(), "--calib", t / "calib.npy", "--setting", "percentile", "-o", t / "q"],
        "--setting 'percentile': write KEY=VALUE, e.g. --setting percentile=99.9",
    ),
    (
        "quantize-setting-not-a-number",
        lambda t: [
            "quantize",
            model(),
            "--calib",
            t / "calib.npy",
            "--observer",
            "percentile",
            "--setting",
            "percentile=abc",
            "-o",
            t / "q",
        ],
        "percentile must be within",
    ),
    (
        "quantize-unknown-setting",
        lambda t: ["quantize", model(), "--calib", t / "calib.npy", "--setting", "bins=64", "-o", t / "q"],
        "observer 'minmax' has no setting 'bins'",
    ),
    (
        "quantize-unknown-observer",
        lambda t: ["quantize", model(), "--calib", t / "calib.npy", "--observer", "kl", "-o", t / "q"],
        "unknown observer 'kl'",
    ),
    (
        "quantize-unknown-weight-scheme",
        lambda t: ["quantize", model(), "--calib", t / "calib.npy", "--weights", "int3", "-o", t / "q"],
        "unknown weight scheme 'int3'",
    ),
    ("build-corrupt-model", lambda t: ["build", t / "corrupt.onnx", "-o", t / "a"], "export it again"),
    (
        "build-preprocess-not-json",
        lambda t: ["build", model(), "--preprocess", "{bad", "-o", t / "a"],
        "--preprocess is not valid JSON",
    ),
    (
        "build-preprocess-not-an-object",
        lambda t: ["build", model(), "--preprocess", "[1]", "-o", t / "a"],
        "--preprocess must be a JSON object",
    ),
    ("build-unknown-target", lambda t: ["build", model(), "-t", "nope", "-o", t / "a"], "nope"),
    (
        "build-unknown-task",
        lambda t: ["build", model(), "--task", "detection", "-o", t / "a"],
        "unknown task 'detection'; the tasks are classify, detect, segment, text-detect, raw",
    ),
    (
        "build-postprocess-not-json",
        lambda t: ["build", model(), "--postprocess", "{conf: 0.3}", "-o", t / "a"],
        "--postprocess is not valid JSON",
    ),
    (
        "build-postprocess-unknown-key",
        lambda t: ["build", model(), "--postprocess", '{"conf": 0.3}', "-o", t / "a"],
        "task classify has no setting 'conf'; its settings: top_k",
    ),
    (
        "build-postprocess-without-a-task",
        lambda t: ["build", t / "detector.onnx", "--postprocess", '{"conf": 0.3}', "-o", t / "a"],
        "the model has none: give one with --task",
    ),
    (
        "build-task-and-postprocess-disagree",
        lambda t: ["build", model(), "--task", "detect", "--postprocess", '{"task": "segment"}', "-o", t / "a"],
        "--task detect and --postprocess's \"task\": 'segment' disagree",
    ),
    (
        "run-engine-option-without-equals",
        lambda t: ["run", t, "--source", "x.mp4", "-e", "compute_units"],
        "--engine-option 'compute_units': write KEY=VALUE, e.g. -e compute_units=CPU_AND_NE",
    ),
    (
        "run-engine-option-empty-key",
        lambda t: ["run", t, "--source", "x.mp4", "-e", "=3"],
        "--engine-option '=3': write KEY=VALUE",
    ),
    ("run-not-an-artifact", lambda t: ["run", t / "empty", "--source", "x.mp4"], "no manifest.json"),
    (
        "run-unknown-task",
        lambda t: ["run", artifact(t), "--source", "x.mp4", "--task", "keypoints"],
        "unknown task 'keypoints'; the tasks are classify, detect",
    ),
    (
        "run-postprocess-not-an-object",
        lambda t: ["run", artifact(t), "--source", "x.mp4", "--postprocess", "0.3"],
        "--postprocess must be a JSON object",
    ),
    (
        "run-postprocess-bad-value",
        lambda t: ["run", artifact(t), "--source", "x.mp4", "--task", "detect", "--postprocess", '{"iou": 1.5}'],
        "iou must be a number from 0 to 1, got 1.5",
    ),
    (
        "run-detector-without-a-task",
        lambda t: ["run", detector_artifact(t), "--source", "x.mp4"],
        "give one with --task NAME (tasks: classify, detect, segment, text-detect, raw)",
    ),
    (
        "run-fleet-does-not-parse",
        lambda t: ["run", artifact(t), "--source", "x.mp4", "--fleet", t / "fleet.toml"],
        "not valid TOML",
    ),
    ("report-corrupt-store", lambda t: ["report", "--db", t / "corrupt.db"], "cannot open the results store"),
    ("demo-corrupt-store", lambda t: ["demo", "--db", t / "corrupt.db"], "cannot open the results store"),
    (
        "devices-check-fleet-does-not-parse",
        lambda t: ["devices", "check", "--fleet", t / "fleet.toml"],
        "not valid TOML",
    ),
    (
        "prune-empty-data-folder",
        lambda t: ["prune", "--demo", "--data", t / "empty", "-o", t / "p"],
        "has no class sub-folders",
    ),
    (
        "prune-preprocess-not-an-object",
        lambda t: ["prune", "--demo", "--preprocess", "5", "-o", t / "p"],
        "--preprocess must be a JSON object",
    ),
    (
        "prune-model-not-importable",
        lambda t: ["prune", "--model", "no_such_module:net", "-o", t / "p"],
        "cannot import 'no_such_module'",
    ),
    (
        "prune-model-with-other-classes",
        lambda t: ["prune", "--model", "torch.nn:Identity", "-o", t / "p"],
        "the model outputs 28 classes but the data has 10",
    ),
    (
        "prune-negative-max-drop",
        lambda t: [
            "prune",
            "--demo",
            "--demo-epochs",
            0,
            "--epochs",
            0,
            "--structured",
            "--target-macs",
            0.5,
            "--max-drop",
            -1,
            "-o",
            t / "p",
        ],
        "max_drop must be >= 0",
    ),
    (
        "prune-bn-gamma-without-batchnorm",
        lambda t: [
            "prune",
            "--model",
            "nets_without_bn:net",
            "--epochs",
            0,
            "--structured",
            "--criterion",
            "bn_gamma",
            "-o",
            t / "p",
        ],
        "criterion 'bn_gamma' needs an affine BatchNorm2d",
    ),
    (
        "distill-missing-teacher",
        lambda t: ["distill", "--teacher", t / "gone.onnx", "--demo-student", "-o", t / "d"],
        "gone.onnx does not exist",
    ),
    (
        "distill-corrupt-teacher",
        lambda t: ["distill", "--teacher", t / "corrupt.onnx", "--demo-student", "-o", t / "d"],
        "export it again",
    ),
    (
        "distill-student-not-importable",
        lambda t: ["distill", "--teacher", model(), "--student", "no_such_module:net", "-o", t / "d"],
        "--student 'no_such_module:net': cannot import",
    ),
    (
        "qat-corrupt-spec",
        lambda t: ["qat", "--demo", "--demo-epochs", 0, "--epochs", 0, "--spec", t / "spec.json", "-o", t / "qat"],
        "is not readable JSON",
    ),
]


def invoke(*args: object) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args])


def assert_one_error_line(result: Result, phrase: str) -> None:
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__} escaped: {result.exception}"
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert phrase in errors[0]


@pytest.mark.parametrize(("args", "phrase"), [case[1:] for case in LIBRARY_ERRORS], ids=[c[0] for c in LIBRARY_ERRORS])
def test_library_error_is_one_line(bad: Path, args, phrase: str) -> None:
    assert_one_error_line(invoke(*args(bad)), phrase)


def test_every_command_is_covered() -> None:
    """Each command has a library-error case above; targets and observers take no input but flags."""
    covered = {case[0].split("-")[0] for case in LIBRARY_ERRORS} | {"targets", "observers"}
    assert covered == set(main.commands)


@pytest.mark.parametrize(
    "args",
    [
        ["targets", "--bogus"],
        ["observers", "--bogus"],
        ["inspect"],
        ["quantize", "model.onnx", "-o", "q"],  # --calib is required
        ["prune", "--demo", "--structured", "--ratio", "1.0", "-o", "p"],
        ["prune", "--demo", "--rounds", "3", "-o", "p"],
        ["prune", "--model", "a:b", "--demo", "-o", "p"],
        ["distill", "--teacher", "t.onnx", "-o", "d"],  # neither --student nor --demo-student
        ["qat", "-o", "q"],  # neither --model nor --demo
        ["devices", "check"],
    ],
    ids=lambda args: "-".join(args[:3]),
)
def test_bad_flags_are_click_usage_errors(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")], result.output


# -- the KEY=VALUE parser every option shares -----------------------------------------------------------


def test_parse_key_values_reads_json_or_text() -> None:
    parsed = parse_key_values(
        ["a=1", "b=2.5", "c=true", "d=null", "e=[1, 2]", "f=CPU_AND_NE", "g=1,3,224,224", "h=", " i =x=y", "a=3"],
        option_name="-O",
        example="-O a=1",
    )
    assert parsed == {
        "a": 3,
        "b": 2.5,
        "c": True,
        "d": None,
        "e": [1, 2],
        "f": "CPU_AND_NE",
        "g": "1,3,224,224",
        "h": "",
        "i": "x=y",
    }


@pytest.mark.parametrize("item", ["novalue", "=1", " =1"])
def test_parse_key_values_refuses_a_missing_key(item: str) -> None:
    with pytest.raises(EdgekitError, match=rf"-O {item!r}: write KEY=VALUE, e.g. -O dla_core=0"):
        parse_key_values([item], option_name="-O", example="-O dla_core=0")


# -- library errors keep the built-in base their callers may catch -------------------------------------------


def test_library_errors_are_edgekit_errors_and_keep_their_builtin_base() -> None:
    from edgekit.calibration.observers import get_observer

    with pytest.raises(CalibrationError) as observer:
        get_observer("kl")
    assert isinstance(observer.value, ValueError)

    torch = pytest.importorskip("torch")
    from edgekit.compress.pruning import MagnitudePruner
    from edgekit.compress.structured import ChannelPruneError

    assert issubclass(ChannelPruneError, EdgekitError) and issubclass(ChannelPruneError, RuntimeError)
    with pytest.raises(CompressError) as pruning:
        MagnitudePruner(torch.nn.Sequential(torch.nn.ReLU()), 0.5)
    assert isinstance(pruning.value, ValueError)
