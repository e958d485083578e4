"""`edgekit prune`, `edgekit distill` and `edgekit qat` end to end on the shipped demo digits, and bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.demo_data import digits_model_path


def invoke(*args: object):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny CNNs train fastest on one thread (and avoid oversubscribed CI runners)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _table_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("│")]


def test_prune_structured_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    result = invoke(
        "prune",
        "--demo",
        "--demo-epochs",
        1,
        "--epochs",
        1,
        "--structured",
        "--ratio",
        0.5,
        "--distill",
        "--keep-residual",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(out / "model.onnx"))
    rows = _table_rows(result.output)
    assert [r.split("│")[1].strip() for r in rows] == ["original", "pruned"]
    assert "%" in rows[1] and "MACs" in result.output and "top-1" in result.output


def test_prune_structured_in_rounds_to_a_mac_target(tmp_path: Path) -> None:
    out = tmp_path / "rounds"
    result = invoke(
        "prune",
        "--demo",
        "--demo-epochs",
        1,
        "--epochs",
        1,
        "--structured",
        "--target-macs",
        0.5,
        "--rounds",
        2,
        "--multiple-of",
        1,
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "round 1: " in result.output and re.search(r"round 2: 5[0-5]% of the MACs", result.output)
    assert "as far as" not in result.output
    coarse = invoke(
        "prune",
        "--demo",
        "--demo-epochs",
        1,
        "--epochs",
        1,
        "--structured",
        "--target-macs",
        0.5,
        "-o",
        tmp_path / "coarse",
    )  # 8 and 16 channels in multiples of 8: 16 -> 8 is all there is
    assert coarse.exit_code == 0 and "as far as channels in multiples of 8 go" in coarse.output
    onnx.checker.check_model(onnx.load(out / "model.onnx"))
    misuse = invoke("prune", "--demo", "--rounds", 3, "-o", out)
    assert misuse.exit_code != 0 and "--target-macs" in misuse.output


def test_prune_unstructured_reaches_the_sparsity(tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    result = invoke("prune", "--demo", "--demo-epochs", 1, "--epochs", 1, "--sparsity", 0.8, "-o", out)
    assert result.exit_code == 0, result.output
    assert "(80.0%)" in result.output
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(out / "model.onnx").graph.initializer]
    big = [w for w in weights if w.ndim >= 2]
    assert sum(int((w == 0).sum()) for w in big) / sum(w.size for w in big) == pytest.approx(0.8, abs=0.01)


def test_prune_ratio_one_is_a_clear_usage_error(tmp_path: Path) -> None:
    result = invoke("prune", "--demo", "--structured", "--ratio", 1.0, "-o", tmp_path / "x")
    assert result.exit_code == 2
    assert "--ratio" in result.output and "every channel" in result.output
    assert not (tmp_path / "x").exists()


def test_distill_onnx_teacher_to_demo_student(tmp_path: Path) -> None:
    out = tmp_path / "student"
    result = invoke("distill", "--teacher", digits_model_path(), "--demo-student", "--epochs", 1, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file()
    rows = _table_rows(result.output)
    assert [r.split("│")[1].strip() for r in rows] == ["teacher", "student"]


def test_distill_teacher_with_other_classes_is_a_clear_error(tmp_path: Path, classifier_factory) -> None:
    teacher = classifier_factory(tmp_path / "four.onnx", classes=4, channels=1, size=28)
    result = invoke("distill", "--teacher", teacher, "--demo-student", "--epochs", 1, "-o", tmp_path / "s")
    assert result.exit_code == 2
    assert "outputs 4 classes" in result.output and "10" in result.output
    assert "Traceback" not in result.output


def test_qat_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "qat"
    result = invoke("qat", "--demo", "--demo-epochs", 1, "--epochs", 1, "-o", out)
    assert result.exit_code == 0, result.output
    spec = json.loads((out / "quant_spec.json").read_text())
    assert spec
    assert (out / "model.onnx").is_file() and (out / "x86-ort-int8" / "manifest.json").is_file()
    rows = _table_rows(result.output)
    assert [r.split("│")[1].strip() for r in rows] == ["fp32", "qat int8 (x86-ort)"]


def test_help_teaches_with_examples() -> None:
    for command in ("prune", "distill", "qat"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert f"edgekit {command} --" in result.output
