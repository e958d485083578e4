"""The CLI end to end: build, run (agent in a subprocess), report, demo, and the bad inputs users hit."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.artifact import write_artifact
from edgekit.cli import main
from edgekit.store import ResultsStore


def invoke(*args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """A real mp4v video of 12 noisy frames."""
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (32, 32))
    rng = np.random.default_rng(0)
    for _ in range(12):
        writer.write(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    writer.release()
    return path


def test_help_teaches_the_usual_path():
    result = invoke("--help")
    assert result.exit_code == 0
    for word in ("inspect", "build", "run", "report", "demo"):
        assert f"edgekit {word}" in result.output


def test_targets_lists_x86_ort():
    result = invoke("targets", "--json")
    assert any(t["name"] == "x86-ort" for t in json.loads(result.output))


def test_targets_lists_each_targets_options():
    listed = json.loads(invoke("targets", "--json").output)
    assert {t["name"]: [o["name"] for o in t["options"]] for t in listed}["ios-coreml"] == ["shapes"]
    table = invoke("targets", "--options", "jetson-trt")
    assert table.exit_code == 0, table.output
    for word in ("option", "type", "default", "help", "dla_core", "int or none", "-O dla_core=0", "workspace_mb"):
        assert word in table.output
    described = json.loads(invoke("targets", "--options", "android-tflite", "--json").output)
    assert [(o["name"], o["type"], o["default"]) for o in described] == [
        ("int8_io", "bool", False),
        ("nchw_input", "bool", False),
    ]
    assert "isa" in invoke("targets", "--options", "x86-ort").output
    unknown = invoke("targets", "--options", "playstation")
    assert unknown.exit_code == 2 and "unknown target 'playstation'" in unknown.output


def test_build_takes_target_options_as_key_value(classifier_path, tmp_path):
    built = invoke(
        "build",
        classifier_path,
        "-t",
        "jetson-trt",
        "-p",
        "fp16",
        "-O",
        "dla_core=1",
        "-O",
        "gpu_fallback=false",
        "-O",
        "max_batch=4",
        "-o",
        tmp_path / "art",
    )
    assert built.exit_code == 0, built.output
    section = json.loads((tmp_path / "art" / "manifest.json").read_text())["build"]
    assert section["dla_core"] == 1 and section["gpu_fallback"] is False
    assert section["profile_shapes"]["input"][2][0] == 4
    # the old flag feeds the same option, so both spellings give the same artifact
    alias = invoke(
        "build",
        classifier_path,
        "-t",
        "jetson-trt",
        "-p",
        "fp16",
        "--dla",
        "1",
        "-O",
        "gpu_fallback=0",
        "--max-batch",
        "4",
        "-o",
        tmp_path / "alias",
    )
    assert alias.exit_code == 0, alias.output
    assert (tmp_path / "alias" / "manifest.json").read_bytes() == (tmp_path / "art" / "manifest.json").read_bytes()
    for args, named in [
        (["-O", "dla_core"], "-O 'dla_core': write KEY=VALUE, e.g. -O dla_core=0"),
        (["-O", "dla_core=first"], "-O dla_core=first (--dla): expected int or none, got 'first'; e.g. -O dla_core=0"),
        (["-O", "dla=0"], "does not take the build option(s) dla; it takes: dla_core ["),
    ]:
        refused = invoke("build", classifier_path, "-t", "jetson-trt", "-p", "fp16", *args, "-o", tmp_path / "bad")
        assert refused.exit_code == 2 and named in refused.output, refused.output
        assert refused.output.count("error:") == 1 and "Traceback" not in refused.output
    assert not (tmp_path / "bad").exists()


def test_build_run_report(classifier_path, video, tmp_path, isolated_store):
    out = tmp_path / "art"
    built = invoke("build", classifier_path, "-t", "x86-ort", "-o", out)
    assert built.exit_code == 0, built.output
    assert (out / "manifest.json").is_file()

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([i % 4 for i in range(12)]))
    ran = invoke("run", out, "--source", video, "--labels", labels, "--warmup", "2")
    assert ran.exit_code == 0, ran.output
    assert "inference" in ran.output and "12 frames timed" in ran.output and "top-1 accuracy" in ran.output

    piped = invoke("run", out, "--source", video, "--pipelined", "--frames", "30", "--loop")
    assert piped.exit_code == 0, piped.output
    assert "30 frames timed (0 dropped)" in piped.output

    runs = ResultsStore(isolated_store).get()
    assert [r.result["mode"] for r in runs] == ["sequential", "pipelined"]
    assert runs[0].result["latency_ms"]["inference"]["count"] == 12
    assert runs[0].result["device"]["cpu_count"] >= 1

    table = invoke("report")
    assert runs[0].run_id[-8:] in table.output and "x86-ort/fp32" in table.output
    assert classifier_path.stem in table.output and "pipe*" in table.output  # the model, and the mode marked
    rows = list(csv.DictReader(io.StringIO(invoke("report", "--csv").output)))
    assert len(rows) == 2 and float(rows[0]["inference_p50_ms"]) > 0
    assert rows[0]["model"] == classifier_path.stem and float(rows[0]["peak_rss_mb"]) > 0  # measured on the device
    assert float(rows[0]["model_load_ms"]) > 0 and float(rows[0]["first_inference_ms"]) > 0
    assert json.loads(invoke("report", "--json", runs[1].run_id).output)[0]["result"]["mode"] == "pipelined"
    html = tmp_path / "report.html"
    assert invoke("report", "--html", html).exit_code == 0
    assert html.read_text().count("<svg") == 2 + 2  # two histograms per run, in its details


def test_engine_options_reach_the_engine(classifier_path, video, tmp_path, isolated_store):
    out = tmp_path / "art"
    assert invoke("build", classifier_path, "-o", out).exit_code == 0
    ran = invoke("run", out, "--source", video, "-e", "graph_optimization=basic", "-e", "inter_op_threads=1")
    assert ran.exit_code == 0, ran.output
    (record,) = ResultsStore(isolated_store).get()
    assert record.plan["engine"]["options"] == {"graph_optimization": "basic", "inter_op_threads": 1}
    unknown = invoke("run", out, "--source", video, "-e", "delegate=nnapi")
    assert unknown.exit_code == 1 and "delegate" in unknown.output and "known" in unknown.output
    malformed = invoke("run", out, "--source", video, "-e", "compute_units")
    assert malformed.exit_code != 0 and "KEY=VALUE" in malformed.output


def test_demo_runs_the_main_job(tmp_path, isolated_store):
    result = invoke("demo", "--workdir", tmp_path / "demo", "--frames", "200", "--int8")
    assert result.exit_code == 0, result.output
    assert "200 frames timed" in result.output
    fp32, int8 = ResultsStore(isolated_store).get()
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    for stored in (fp32, int8):
        assert stored.result["accuracy"]["count"] == 200
        assert stored.result["accuracy"]["top1"] > 0.9  # a real model on real held-out digits


# -- bad input: each a clear error naming what was wrong ---------------------------------------


def test_corrupt_model_is_named(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    result = CliRunner().invoke(main, ["build", str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "broken.onnx" in result.output and "export it again" in result.output


def test_missing_model_is_named(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "gone.onnx")])
    assert result.exit_code == 2 and "gone.onnx does not exist" in result.output


def test_unreadable_video_fails_the_run_and_is_stored(classifier_path, tmp_path, isolated_store):
    invoke("build", classifier_path, "-o", tmp_path / "art")
    fake = tmp_path / "notavideo.mp4"
    fake.write_bytes(b"this is text, not H.264")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "art"), "--source", str(fake)])
    assert result.exit_code == 1
    assert "notavideo.mp4" in result.output
    assert ResultsStore(isolated_store).get()[0].status == "error"


def test_empty_image_folder_is_named(classifier_path, tmp_path):
    invoke("build", classifier_path, "-o", tmp_path / "art")
    empty = tmp_path / "no_images"
    empty.mkdir()
    result = CliRunner().invoke(main, ["run", str(tmp_path / "art"), "--source", str(empty)])
    assert result.exit_code == 1 and "no_images" in result.output


def test_labels_that_do_not_match_the_outputs_are_refused_before_running(classifier_path, video, tmp_path):
    invoke("build", classifier_path, "-o", tmp_path / "art")
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n7\n")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "art"), "--source", str(video), "--labels", str(labels)])
    assert result.exit_code == 2 and "label 7 is outside the model's 4 classes" in result.output


def test_engine_the_device_lacks_is_a_clear_error(classifier_path, video, tmp_path):
    invoke("build", classifier_path, "-o", tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    manifest.pop("files")
    manifest.update(engine="tensorrt", target="jetson-trt")
    write_artifact(tmp_path / "trt", {"model.onnx": (tmp_path / "art" / "model.onnx")}, manifest)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "trt"), "--source", str(video)])
    assert result.exit_code == 1
    assert "tensorrt" in result.output


def test_corrupt_frame_mid_run_keeps_earlier_frames(classifier_path, tmp_path, isolated_store):
    invoke("build", classifier_path, "-o", tmp_path / "art")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.full((20, 20, 3), i * 40, np.uint8))
    (folder / "03.png").write_bytes(b"not a png")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "art"), "--source", str(folder), "--warmup", "0"])
    assert result.exit_code == 1
    stored = ResultsStore(isolated_store).get()[0]
    assert stored.status == "partial"
    assert stored.result["frames"]["timed"] == 3
    assert "03.png" in json.dumps(stored.result["errors"])


def test_quantize_then_build_int8_and_run(tmp_path, isolated_store):
    from edgekit.demo_data import digits_model_path, load_heldout_digits, render_digits_video

    images, labels = load_heldout_digits()
    calib = render_digits_video(images[:64], labels[:64], tmp_path / "calib.mp4")
    held = render_digits_video(images[64:264], labels[64:264], tmp_path / "held.mp4")
    quantized = invoke(
        "quantize",
        digits_model_path(),
        "--calib",
        calib,
        "--observer",
        "percentile",
        "--eval",
        held,
        "--labels",
        f"{held}.labels.json",
        "-o",
        tmp_path / "q",
    )
    assert quantized.exit_code == 0, quantized.output
    assert (tmp_path / "q" / "trt_calibration.cache").is_file()
    passes = invoke(
        "quantize",
        digits_model_path(),
        "--calib",
        calib,
        "--equalize",
        "--bias-correction",
        "--html",
        tmp_path / "q2.html",
        "-o",
        tmp_path / "q2",
    )
    assert passes.exit_code == 0, passes.output
    assert "transforms: equalize, bias_correction" in passes.output
    assert "Per-tensor error" in (tmp_path / "q2.html").read_text()
    assert "per-tensor error" in quantized.output and "quantized_top1" in quantized.output
    spec = tmp_path / "q" / "quant_spec.json"

    from_spec = invoke("build", digits_model_path(), "--precision", "int8", "--spec", spec, "-o", tmp_path / "a1")
    assert from_spec.exit_code == 0, from_spec.output
    from_calib = invoke(
        "build",
        digits_model_path(),
        "--precision",
        "int8",
        "--calib",
        calib,
        "--observer",
        "percentile",
        "-o",
        tmp_path / "a2",
    )
    assert from_calib.exit_code == 0, from_calib.output
    manifests = [json.loads((tmp_path / a / "manifest.json").read_text()) for a in ("a1", "a2")]
    assert manifests[0]["precision"] == "int8" and manifests[0]["quant_spec_sha256"]
    assert manifests[0]["files"] == manifests[1]["files"]  # same data, same observer: the same model bytes

    ran = invoke("run", tmp_path / "a1", "--source", held, "--labels", f"{held}.labels.json", "--warmup", "2")
    assert ran.exit_code == 0, ran.output
    stored = ResultsStore(isolated_store).get()[0]
    assert stored.precision == "int8" and stored.result["accuracy"]["top1"] > 0.95


def test_int8_without_calibration_data_is_explained(classifier_path, tmp_path):
    result = CliRunner().invoke(main, ["build", str(classifier_path), "--precision", "int8", "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--calib" in result.output


def test_spec_for_another_model_is_refused(tmp_path, classifier_path):
    from edgekit.demo_data import digits_model_path

    spec_dir = tmp_path / "q"
    data = np.random.default_rng(0).normal(size=(8, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    assert invoke("quantize", digits_model_path(), "--calib", tmp_path / "calib.npy", "-o", spec_dir).exit_code == 0
    result = CliRunner().invoke(
        main,
        [
            "build",
            str(classifier_path),
            "-p",
            "int8",
            "--spec",
            str(spec_dir / "quant_spec.json"),
            "-o",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == 2 and "calibrate this model again" in result.output


def test_quantize_takes_preprocess_for_a_dynamic_model_and_mixed_size_images(tmp_path):
    """A model with free height/width and photos of several sizes: --preprocess brings every image to one input
    size (without it each image kept its own size and ONNX Runtime failed mid-calibration)."""
    import cv2
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "dynamic",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, "h", "w"])],
        initializer=[weight],
    )
    model = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for index, (h, w) in enumerate([(40, 60), (64, 48), (33, 70), (50, 50)]):
        cv2.imwrite(str(photos / f"{index}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    spec = '{"resize": [32, 32], "resize_mode": "letterbox"}'
    result = invoke("quantize", model, "--calib", photos, "--preprocess", spec, "-o", tmp_path / "q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "q" / "quant_spec.json").is_file()
