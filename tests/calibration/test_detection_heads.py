"""Detection heads: a Concat of boxes (0..320) and scores (0..1) at the output is found from the calibration
statistics and kept accurate on every target (x86-ort, jetson-trt, android-tflite, ios-coreml w8a8).

These tests quantize the output tail (output_tail="int8") so that the mixed-range rule is seen alone; by
default the whole decoding after the last learned layers stays float (tests/calibration/test_output_tail.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.calibration.calibrate import calibrate, prepare_float_model
from edgekit.calibration.error_report import report_html
from edgekit.calibration.mixed_range import apply_policy, find_mixed_range_concats, report_lines
from edgekit.calibration.quant_spec import QuantSpec, TensorQuant
from edgekit.calibration.quantize import quantize
from edgekit.errors import CalibrationError
from edgekit.model import Model
from edgekit.targets import get_target

SIZE, STRIDE, CLASSES = 320, 8, 5
CONCAT = "/Concat_1"  # the head's Concat in the exported graph (boxes, scores)
TAIL = "int8"  # the output tail quantized: the mixed-range rule alone


# -- a YOLOv8-style detector in torch -------------------------------------------------------------------


def _detector(calibration: np.ndarray):
    """A small conv backbone, a box branch decoded as YOLOv8 does (anchor point -/+ distances, x stride: cx, cy,
    w, h in 0..320) and a sigmoid score branch, concatenated on the channel axis: output [1, 4 + nc, N]."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TinyDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(
                *(
                    layer
                    for c_in, c_out in ((3, 8), (8, 16), (16, 32))
                    for layer in (nn.Conv2d(c_in, c_out, 3, 2, 1), nn.ReLU())
                )
            )
            self.lt, self.rb = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 2, 1)  # distances to the box's sides, in cells
            self.cls = nn.Conv2d(32, CLASSES, 1)
            cells = torch.arange(SIZE // STRIDE) + 0.5
            ys, xs = torch.meshgrid(cells, cells, indexing="ij")
            self.register_buffer("anchors", torch.stack([xs, ys])[None])

        def forward(self, x):
            f = self.backbone(x)
            lt, rb = torch.sigmoid(self.lt(f)) * 4, torch.sigmoid(self.rb(f)) * 4
            x1y1, x2y2 = self.anchors - lt, self.anchors + rb
            boxes = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * STRIDE
            return torch.cat([boxes, torch.sigmoid(self.cls(f))], 1).flatten(2)

    torch.manual_seed(0)
    module = TinyDetector().eval()
    with torch.no_grad():  # scores like a trained detector's: mostly low, some confident (0.003..0.9)
        features = module.backbone(torch.from_numpy(calibration))
        logits = module.cls(features)  # per class: logits of std 2 around -2.5
        module.cls.weight.mul_((2.0 / logits.std((0, 2, 3))).reshape(-1, 1, 1, 1))
        module.cls.bias.sub_(module.cls(features).mean((0, 2, 3)) + 2.5)
    return module


def _photos(count: int) -> np.ndarray:
    """Crops of scikit-learn's two sample photographs, 320x320, RGB in 0..1, NCHW."""
    import cv2

    datasets = pytest.importorskip("sklearn.datasets")
    rng = np.random.default_rng(0)
    crops = []
    for index in range(count):
        image = datasets.load_sample_images().images[index % 2]
        side = int(rng.integers(200, 420))
        y, x = (int(rng.integers(0, image.shape[i] - side + 1)) for i in (0, 1))
        crops.append(cv2.resize(image[y : y + side, x : x + side], (SIZE, SIZE)).transpose(2, 0, 1))
    return np.stack(crops).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Model, np.ndarray, Path]:
    photos = _photos(16)
    module = _detector(photos)
    torch = pytest.importorskip("torch")
    model = Model.from_torch(module, torch.from_numpy(photos[:1]), input_names=["images"], output_names=["output0"])
    path = tmp_path_factory.mktemp("detector") / "detector.onnx"
    onnx.save(model.proto, path)
    return Model.load(path), photos, path


def _outputs(model: onnx.ModelProto | Path, photos: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"images": x[None]})[0] for x in photos])


def _sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - test) ** 2).sum()))


def _box_and_score_sqnr(reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    return _sqnr(reference[:, :4], test[:, :4]), _sqnr(reference[:, 4:], test[:, 4:])


# -- x86-ort: found, reported, kept float --------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(detector):
    model, photos, _ = detector
    feeds = [{"images": x[None]} for x in photos[:8]]
    return {
        policy: quantize(
            model,
            photos,
            progress=False,
            eval_feeds=feeds,
            error_samples=4,
            mixed_range_policy=policy,
            output_tail=TAIL,
        )
        for policy in ("report", "float", "branches")
    }


def test_the_head_concat_is_found_with_its_ranges(quantized):
    record = quantized["report"].spec.calibration["mixed_range"]
    assert record["factor"] == 16.0 and record["policy"] == "report"
    [found] = record["found"]
    assert found["node"] == CONCAT and found["outputs"] == ["output0"] and found["followers"] == ["/Reshape"]
    (boxes_lo, boxes_hi), (scores_lo, scores_hi) = (i["observed"] for i in found["inputs"])
    assert 0 <= boxes_lo < 10 and 300 < boxes_hi <= 320 and 0 <= scores_lo < scores_hi < 1
    assert found["ratio"] > 300
    # the box branch's own concat (cx, cy | w, h) feeds a Mul, not an output: not a head
    assert "/Concat" not in quantized["float"].spec.float_nodes


def test_without_the_fix_the_scores_are_lost_with_it_they_survive(quantized, detector, tmp_path):
    model, photos, _ = detector
    reference = _outputs(model.proto, photos)
    figures = {}
    for policy, result in quantized.items():
        artifact = get_target("x86-ort").build(model, tmp_path / policy, precision="int8", quant_spec=result.spec)
        figures[policy] = _box_and_score_sqnr(reference, _outputs(artifact.model_path, photos))
        [line] = artifact.manifest["quantization"]["mixed_range"]
        assert line.startswith(f"mixed-range concat {CONCAT}: inputs ")
    print("x86-ort (box SQNR, score SQNR) dB:", figures)
    assert figures["report"][1] < 5  # one uint8 grid over 0..320: a step of 1.25 for scores below 1
    assert figures["float"][1] > 20 and figures["branches"][1] > 20
    assert figures["float"][1] > figures["report"][1] + 20
    assert all(box > 35 for box, _ in figures.values())


def test_the_spec_records_why_and_the_qdq_model_follows_the_policy(quantized):
    spec = quantized["float"].spec
    reason = spec.nodes[CONCAT]["reason"]
    assert re.fullmatch(r"mixed-range concat: inputs [\d.]+\.\.3\d\d and [\d.e-]+\.\.(0\.\d+|1)", reason), reason
    assert spec.float_nodes == {CONCAT, "/Reshape"} and spec.nodes["/Reshape"]["reason"].startswith(f"after {CONCAT}")
    assert quantized["report"].spec.float_nodes == set()

    def readers_of_concat(result) -> list[str]:
        producers = {out: node for node in result.qdq_model.graph.node for out in node.output}
        concat = next(node for node in result.qdq_model.graph.node if node.name == CONCAT)
        return [producers[name].op_type for name in concat.input]

    # float: the branches end in float ops; branches: each input on its own grid; report: the concat's output too
    assert readers_of_concat(quantized["float"]) == ["Mul", "Sigmoid"]
    assert readers_of_concat(quantized["branches"]) == ["DequantizeLinear", "DequantizeLinear"]
    assert quantized["branches"].spec.nodes[CONCAT]["inputs"] == "quantized"

    def quantized_tensors(result) -> set[str]:
        return {node.input[0] for node in result.qdq_model.graph.node if node.op_type == "QuantizeLinear"}

    assert "/Concat_1_output_0" in quantized_tensors(quantized["report"])
    assert "/Concat_1_output_0" not in quantized_tensors(quantized["float"]) | quantized_tensors(quantized["branches"])


def test_the_report_points_at_the_head(quantized, tmp_path):
    report = quantized["float"].report()
    assert report["mixed_range"]["found"][0]["node"] == CONCAT
    [line] = report_lines(report["mixed_range"])
    assert line.startswith(f"mixed-range concat {CONCAT}: inputs ") and "feeds output output0" in line
    assert line.endswith(f"kept float: {CONCAT}, /Reshape")
    assert "mixed-range concats" in report_html(json.loads(json.dumps(report)))
    assert "left as is" in report_lines(quantized["report"].report()["mixed_range"])[0]


def test_edgekit_quantize_prints_the_line(detector, tmp_path):
    from edgekit.cli import main

    _, photos, path = detector
    np.save(tmp_path / "calib.npy", photos[:4])
    runner = CliRunner(env={"COLUMNS": "250"})
    args = ["quantize", str(path), "--calib", str(tmp_path / "calib.npy"), "--output-tail", "int8"]
    args += ["-o", str(tmp_path / "q")]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"mixed-range concat {CONCAT}: inputs" in result.output and "kept float" in result.output
    assert "/Concat_1, /Reshape" in result.output  # the QuantSpec summary's kept-float line
    result = runner.invoke(main, [*args[:-1], str(tmp_path / "r"), "--mixed-range", "report"], catch_exceptions=False)
    assert result.exit_code == 0 and "left as is" in result.output
    bad = runner.invoke(main, [*args[:-1], str(tmp_path / "b"), "--mixed-range", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
    # `edgekit build --calib` calibrates with the default policy and says so too
    built = runner.invoke(main, ["build", str(path), "-p", "int8", *args[2:4], "-o", str(tmp_path / "art")])
    assert built.exit_code == 0, built.output
    assert f"mixed-range concat {CONCAT}: inputs" in built.output and "kept float" in built.output


# -- the other targets -------------------------------------------------------------------------------------


def test_jetson_trt_leaves_the_head_float_in_qdq_and_cache(detector, tmp_path):
    from edgekit.targets.tensorrt_cache import cache_scales

    model, photos, _ = detector
    target = get_target("jetson-trt")
    spec = calibrate(model, photos, activations=target.activation_scheme, progress=False, output_tail=TAIL).spec
    assert spec.float_nodes == {CONCAT, "/Reshape"}
    artifact = target.build(model, tmp_path / "trt", precision="int8", quant_spec=spec)
    assert _box_and_score_sqnr(_outputs(model.proto, photos), _outputs(artifact.model_path, photos))[1] > 20
    # implicit INT8 (the calibration cache): no scale for the head's tensors, so TensorRT runs them in float
    dropped = set(cache_scales(spec)) - set(cache_scales(spec, prepare_float_model(model.proto, spec)))
    [found] = spec.calibration["mixed_range"]["found"]
    assert dropped == {"/Concat_1_output_0", *(i["tensor"] for i in found["inputs"])}
    assert artifact.manifest["quantization"]["kept_float"] == [CONCAT, "/Reshape"]


def test_coreml_w8a8_replay_skips_the_kept_float_tensors(detector):
    from edgekit.targets.coreml_onnx import build_module
    from edgekit.targets.coreml_w8a8 import replay_quantizers

    torch = pytest.importorskip("torch")
    model, photos, _ = detector
    target = get_target("ios-coreml")
    reference = _outputs(model.proto, photos[:4])
    scores = {}
    for policy in ("report", "float"):
        spec = calibrate(
            model,
            photos,
            activations=target.activation_scheme,
            progress=False,
            mixed_range_policy=policy,
            output_tail=TAIL,
        ).spec
        prepared = prepare_float_model(model.proto, spec)
        quantizers = replay_quantizers(spec, prepared)
        module = build_module(
            prepared, (1, 3, SIZE, SIZE), activation_quant=quantizers.activations, weight_quant=quantizers.weights
        )
        with torch.no_grad():
            got = np.concatenate([module(torch.from_numpy(x[None])).numpy() for x in photos[:4]])
        scores[policy] = _box_and_score_sqnr(reference, got)[1]
        if policy == "float":
            assert "/Concat_1_output_0" in quantizers.kept_float and "/Concat_1_output_0" not in quantizers.activations
    print("ios-coreml w8a8 replay score SQNR dB:", scores)
    assert scores["report"] < 5 and scores["float"] > 20


def test_android_tflite_int8_dequantizes_before_the_float_head(detector, tmp_path):
    for module in ("tensorflow", "ai_edge_litert", "ai_edge_quantizer"):
        pytest.importorskip(module, reason="needs the tflite extra (pip install 'edgekit[tflite]')")
    from edgekit.runtime.engines.tflite import TfliteEngine
    from edgekit.targets.tflite_quant import _interpreter

    model, photos, _ = detector
    target = get_target("android-tflite")
    spec = calibrate(model, photos, activations=target.activation_scheme, progress=False, output_tail=TAIL).spec
    artifact = target.build(model, tmp_path / "tflite", precision="int8", quant_spec=spec)
    data = artifact.model_path.read_bytes()
    interpreter = _interpreter(data)
    details = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    producer = {op["outputs"][0]: op["op_name"] for op in ops}
    floats = [op for op in ops if details[op["outputs"][0]]["dtype"] == np.float32]
    # the head: DEQUANTIZE of each branch (on its own grid), then the concat and the shape ops in float
    assert [op["op_name"] for op in floats] == ["DEQUANTIZE", "DEQUANTIZE", "CONCATENATION", "TRANSPOSE", "RESHAPE"]
    assert [producer[i] for i in floats[2]["inputs"]] == ["DEQUANTIZE", "DEQUANTIZE"]
    assert len(ops) - len(floats) > 10  # everything before it stays int8
    quantization = artifact.manifest["quantization"]
    assert quantization["full_integer"] is False and quantization["kept_float"] == [CONCAT, "/Reshape"]
    assert len(quantization["mixed_range"]) == 1
    notes = {note["what"]: note["why"] for note in artifact.manifest["not_honoured"]}
    assert not any(what.startswith("float nodes") for what in notes)
    assert any(what.startswith("float inputs of the kept-float nodes") for what in notes)
    reference = _outputs(model.proto, photos)
    with TfliteEngine.from_bytes(data, {"threads": 1}) as engine:
        got = np.concatenate([engine.infer({engine.input_names[0]: x[None].transpose(0, 2, 3, 1)})[0] for x in photos])
    boxes, scores = _box_and_score_sqnr(reference, got)
    print(f"android-tflite int8 box SQNR {boxes:.1f} dB, score SQNR {scores:.1f} dB")
    assert scores > 20 and boxes > 30


# -- the rules on hand-made graphs, and a real model with nothing to find -----------------------------------


def _entry(lo: float, hi: float) -> TensorQuant:
    return TensorQuant("activation", "uint8", (hi - lo) / 255, 0, range=(lo, hi), observed=(lo, hi))


def _graph(nodes: list[onnx.NodeProto], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [
            numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
            numpy_helper.from_array(np.ones((2, 2), np.float32), "w"),
        ],
    )
    return helper.make_model(graph)


def test_yolov5_style_heads_reach_the_output_through_reshape_and_concat():
    """Per level: Concat(xy 0..640, conf 0..1) -> Reshape; the levels -> Concat -> output. An inner mixed concat
    that feeds a computing op (MatMul) is not a head; a concat within the factor is not mixed."""
    nodes = [
        helper.make_node("Concat", ["xy0", "conf0"], ["c0"], name="head0", axis=1),
        helper.make_node("Reshape", ["c0", "shape"], ["r0"], name="reshape0"),
        helper.make_node("Concat", ["xy1", "conf1"], ["c1"], name="head1", axis=1),
        helper.make_node("Reshape", ["c1", "shape"], ["r1"], name="reshape1"),
        helper.make_node("Concat", ["r0", "r1"], ["out"], name="levels", axis=1),
        helper.make_node("Concat", ["xy0", "conf0"], ["inner"], name="inner", axis=1),
        helper.make_node("MatMul", ["inner", "w"], ["mm"], name="mm"),
        helper.make_node("Concat", ["a", "b"], ["near"], name="near", axis=1),
    ]
    model = _graph(nodes, ["out", "mm", "near"])
    spec = QuantSpec("0" * 64, {"activations": "uint8_asym", "weights": "int8_per_channel"})
    ranges = {"xy0": (0, 640), "conf0": (0, 1), "xy1": (-2, 600), "conf1": (0, 0.9), "a": (0, 15), "b": (-1, 0)}
    spec.tensors = {name: _entry(*r) for name, r in ranges.items()}
    found = find_mixed_range_concats(model, spec)
    assert [f.node for f in found] == ["head0", "head1"]
    assert found[0].followers == ["reshape0", "levels"] and found[0].outputs == ["out"]
    assert found[1].ranges_text == "inputs -2..600 and 0..0.9"
    assert [f.node for f in find_mixed_range_concats(model, spec, factor=10)] == ["head0", "head1", "near"]
    assert find_mixed_range_concats(model, spec, factor=1000) == []
    apply_policy(spec, found, "branches")
    assert spec.float_nodes == {"head0", "reshape0", "levels", "head1", "reshape1"}
    assert spec.float_nodes_reading_quantized == {"head0", "head1"}
    assert spec.nodes["head1"]["reason"] == "mixed-range concat: inputs -2..600 and 0..0.9"
    assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).nodes == spec.nodes
    with pytest.raises(CalibrationError, match="unknown mixed-range policy 'keep'.*float, branches, report"):
        apply_policy(spec, found, "keep")


def test_paddleocr_det_has_no_mixed_range_head():
    """The real PaddleOCR det model (DB: an FPN whose Concats join maps of similar range, and one probability
    map at the output) is left alone."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr is not installed (pip install rapidocr): it ships the PaddleOCR ONNX models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "PP-OCRv6_det_small.onnx"
    if not path.is_file():
        pytest.skip(f"this rapidocr has no {path.name}")
    model = Model.load(path)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    calibration = calibrate(model, (_photos(4) - mean) / std, progress=False, output_tail=TAIL)
    concats = [
        n for n in calibration.float_model.graph.node if n.op_type == "Concat" and n.name in calibration.plan.nodes
    ]
    assert len(concats) >= 2  # the FPN's float concats were observed, and judged
    assert calibration.spec.calibration["mixed_range"]["found"] == []
    assert calibration.spec.float_nodes == set()
