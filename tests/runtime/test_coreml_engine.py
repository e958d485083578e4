"""The Core ML engine up to the hardware line: registration, options, unpacking the artifact's package,
reading inputs and outputs from a real spec, and image feeds. Prediction needs macOS and skips elsewhere."""

import importlib.util
import io
import sys
import zipfile

import numpy as np
import pytest

from edgekit.runtime.engines import EngineError, EngineUnavailable, known_engines, open_engine
from edgekit.runtime.engines.coreml import CoreMLEngine, io_from_spec, package_path, to_image

HAS_COREMLTOOLS = importlib.util.find_spec("coremltools") is not None
ON_MAC = sys.platform == "darwin"


def _zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_registered_as_a_real_engine():
    assert "coreml" in known_engines()


@pytest.mark.skipif(ON_MAC or not HAS_COREMLTOOLS, reason="checks the message off macOS with coremltools installed")
def test_opening_off_macos_says_prediction_needs_macos(tmp_path):
    path = tmp_path / "model.mlpackage.zip"
    path.write_bytes(_zip({"model.mlpackage/Manifest.json": b"{}"}))
    with pytest.raises(EngineUnavailable, match="needs macOS"):
        open_engine("coreml", str(path), {"compute_units": "CPU_AND_NE"})


def test_options_are_checked(tmp_path):
    with pytest.raises(EngineError, match="unknown"):
        CoreMLEngine(str(tmp_path / "m"), {"providers": ["x"]})
    with pytest.raises(EngineError, match="CPU_AND_NE"):
        CoreMLEngine(str(tmp_path / "m"), {"compute_units": "NPU"})
    engine = CoreMLEngine(str(tmp_path / "m"), {"compute_units": "cpu_and_ne", "threads": 2})
    assert engine.compute_units == "CPU_AND_NE" and engine.facts()["providers"] == ["CPU_AND_NE"]


def test_package_path_unpacks_zip_and_refuses_escapes(tmp_path):
    good = tmp_path / "model.mlpackage.zip"
    good.write_bytes(_zip({"model.mlpackage/Manifest.json": b"{}", "model.mlpackage/Data/x.bin": b"1"}))
    unpacked = package_path(str(good), str(tmp_path / "out"))
    assert unpacked.endswith("model.mlpackage") and (tmp_path / "out" / "model.mlpackage" / "Data" / "x.bin").exists()
    evil = tmp_path / "evil.zip"
    evil.write_bytes(_zip({"../outside.txt": b"x"}))
    with pytest.raises(EngineError, match="outside"):
        package_path(str(evil), str(tmp_path / "out2"))
    assert not (tmp_path / "outside.txt").exists()
    folder = tmp_path / "m.mlpackage"
    (folder / "Data").mkdir(parents=True)
    (folder / "Manifest.json").write_text("{}")
    assert package_path(str(folder), str(tmp_path)) == str(folder)
    assert package_path(str(folder / "Manifest.json"), str(tmp_path)) == str(folder)
    with pytest.raises(EngineError, match="neither"):
        package_path(str(tmp_path / "evil.txt"), str(tmp_path))


def test_to_image_turns_agent_frames_into_pil_images():
    pytest.importorskip("PIL")
    rgb = to_image(np.zeros((1, 4, 6, 3), np.uint8), "RGB")
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    gray = to_image(np.zeros((1, 4, 6, 1), np.uint8), "GRAY")
    assert gray.mode == "L" and gray.size == (6, 4)
    with pytest.raises(EngineError, match="uint8"):
        to_image(np.zeros((1, 4, 6, 3), np.float32), "RGB")


def test_io_from_spec_reads_a_real_package():
    torch = pytest.importorskip("torch")
    ct = pytest.importorskip("coremltools")
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    traced = torch.jit.trace(module, torch.zeros(1, 3, 8, 8))
    image = ct.ImageType(name="image", shape=(1, 3, 8, 8), scale=1 / 255, color_layout=ct.colorlayout.BGR)
    mlmodel = ct.convert(
        traced,
        inputs=[image],
        outputs=[ct.TensorType(name="out")],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        skip_model_load=True,
    )
    inputs, outputs = io_from_spec(mlmodel.get_spec())
    assert inputs == [
        {"name": "image", "kind": "image", "dtype": np.dtype(np.uint8), "shape": [1, 8, 8, 3], "color": "BGR"}
    ]
    assert [o["name"] for o in outputs] == ["out"] and outputs[0]["kind"] == "tensor"


@pytest.mark.skipif(not ON_MAC or not HAS_COREMLTOOLS, reason="needs macOS (Core ML prediction)")
def test_predicts_on_macos_with_each_compute_unit(tmp_path):
    torch = pytest.importorskip("torch")
    from edgekit.model import Model
    from edgekit.targets import get_target

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    model = Model.from_torch(module, torch.zeros(1, 3, 16, 16), preprocess={"resize": [16, 16]})
    artifact = get_target("ios-coreml").build(model, tmp_path / "a", precision="fp16")
    frame = np.full((1, 16, 16, 3), 128, np.uint8)
    expected = module(torch.full((1, 3, 16, 16), 128 / 255)).detach().numpy()
    for units in ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"):
        with open_engine("coreml", str(artifact.model_path), {"compute_units": units}) as engine:
            (got,) = engine.infer({engine.input_names[0]: frame})
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-2)
