"""The Core ML engine (macOS): coremltools prediction on the CPU, GPU and Neural Engine.

Compute units are an engine option: `ALL` (default), `CPU_ONLY`, `CPU_AND_GPU`, `CPU_AND_NE`. The artifact
ships the .mlpackage as `model.mlpackage.zip`; it is unpacked into a temporary folder when the engine
loads (a `.mlpackage` folder, or a file inside one, works too). Image inputs take the agent's uint8
1xHxWxC frame as an RGB (or grayscale) image, so the scale and bias folded into the model apply; tensor
inputs take the numpy array as it is. Outputs come back in the model's declared order.

Core ML prediction exists only on macOS: elsewhere the engine stays registered (so `--facts` lists the
package) and opening it says so. coremltools is imported when the engine loads. Python 3.8-compatible.
"""

import os
import platform
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import register_engine
from .base import Engine, EngineError, EngineOptions, EngineUnavailable, TensorInfo

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
# Core ML multi-array data types (FeatureTypes.proto ArrayFeatureType.ArrayDataType) -> numpy
_ARRAY_DTYPES = {65568: np.float32, 65552: np.float16, 65600: np.float64, 131104: np.int32, 131080: np.int8}


@dataclass(frozen=True)
class CoreMLOptions(EngineOptions):
    """threads is accepted and ignored: Core ML chooses its own threads."""

    compute_units: str = field(
        default="ALL",
        metadata={
            "help": "ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE (any case)",
        },
    )

    def check(self) -> None:
        EngineOptions.check(self)
        if str(self.compute_units).upper() not in COMPUTE_UNITS:
            raise EngineError("coreml compute_units %r: use one of %s" % (self.compute_units, ", ".join(COMPUTE_UNITS)))


def package_path(model_path: str, unpack_into: str) -> str:
    """The .mlpackage folder for `model_path`: unpacked from a zip into `unpack_into`, or found in place."""
    if os.path.isdir(model_path):
        return model_path
    if zipfile.is_zipfile(model_path):
        root = os.path.realpath(unpack_into)
        with zipfile.ZipFile(model_path) as archive:
            names = archive.namelist()
            for name in names:  # refuse entries that would land outside the folder
                target = os.path.realpath(os.path.join(root, name))
                if os.path.commonpath([root, target]) != root:
                    raise EngineError(
                        "%s holds an entry outside its folder (%r): rebuild the artifact" % (model_path, name)
                    )
            archive.extractall(root)
        packages = sorted({n.split("/")[0] for n in names if n.split("/")[0].endswith(".mlpackage")})
        if len(packages) != 1:
            raise EngineError("%s must hold exactly one .mlpackage folder, found %s" % (model_path, packages or "none"))
        return os.path.join(root, packages[0])
    parent = os.path.dirname(model_path)
    if parent.endswith(".mlpackage"):
        return parent
    raise EngineError("%s is neither a .mlpackage (folder or zip) nor a file inside one" % model_path)


def io_from_spec(spec: Any) -> List[List[Dict[str, Any]]]:
    """[inputs, outputs] of a Core ML model spec: name, kind (image|tensor), dtype, shape, color."""
    found = []
    for features in (spec.description.input, spec.description.output):
        described = []
        for feature in features:
            kind = feature.type.WhichOneof("Type")
            if kind == "imageType":
                image = feature.type.imageType
                color = {10: "GRAY", 20: "RGB", 30: "BGR"}.get(image.colorSpace, "RGB")
                channels = 1 if color == "GRAY" else 3
                shape = [1, int(image.height), int(image.width), channels]
                described.append(
                    {"name": feature.name, "kind": "image", "dtype": np.dtype(np.uint8), "shape": shape, "color": color}
                )
            elif kind == "multiArrayType":
                array = feature.type.multiArrayType
                dtype = _ARRAY_DTYPES.get(array.dataType)
                described.append(
                    {
                        "name": feature.name,
                        "kind": "tensor",
                        "dtype": np.dtype(dtype) if dtype is not None else None,
                        "shape": [int(d) for d in array.shape],
                    }
                )
            else:
                described.append({"name": feature.name, "kind": kind or "unknown", "dtype": None, "shape": None})
        found.append(described)
    return found


def to_image(value: np.ndarray, color: str) -> Any:
    """A 1xHxWxC (or HxWxC / HxW) uint8 array as the PIL image Core ML's image inputs take."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise EngineError("Core ML image inputs need Pillow: pip install pillow") from exc
    array = np.asarray(value)
    if array.ndim == 4:
        array = array[0]
    if array.dtype != np.uint8:
        raise EngineError("image input must be uint8 pixels, got %s: set preprocess dtype uint8" % array.dtype)
    if color == "GRAY":
        return Image.fromarray(array.reshape(array.shape[0], array.shape[1]), mode="L")
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")


@register_engine("coreml", package="coremltools (macOS only)", modules=("coremltools",), platforms=("darwin",))
class CoreMLEngine(Engine):
    """Core ML through coremltools, with the options of `CoreMLOptions`."""

    name = "coreml"
    Options = CoreMLOptions
    config: CoreMLOptions

    def __init__(self, model_path: str, options: Optional[Dict[str, Any]] = None) -> None:
        Engine.__init__(self, model_path, options)
        self.compute_units = str(self.config.compute_units).upper()
        self._model: Any = None
        self._tmp: Optional[str] = None
        self._images: Dict[str, str] = {}
        self._version: Optional[str] = None

    def _load(self) -> None:
        if sys.platform != "darwin":
            raise EngineUnavailable(
                "Core ML prediction needs macOS (coremltools cannot run models on %s): run this artifact on a Mac "
                "or build it for another target" % platform.system()
            )
        try:
            import coremltools as ct
        except ImportError as exc:
            raise EngineUnavailable("engine 'coreml' needs coremltools: pip install coremltools") from exc
        self._version = ct.__version__
        self._tmp = tempfile.mkdtemp(prefix="edgekit-coreml-")
        try:
            path = package_path(self.model_path, self._tmp)
            self._model = ct.models.MLModel(path, compute_units=getattr(ct.ComputeUnit, self.compute_units))
        except EngineError:
            self._close()
            raise
        except Exception as exc:
            self._close()
            raise EngineError("Core ML could not load %s: %s" % (self.model_path, exc)) from exc
        inputs, outputs = io_from_spec(self._model.get_spec())
        self.inputs = [TensorInfo(i["name"], i["dtype"], i["shape"]) for i in inputs]
        self.outputs = [TensorInfo(o["name"], o["dtype"], o["shape"]) for o in outputs]
        self._images = {i["name"]: i["color"] for i in inputs if i["kind"] == "image"}

    def _close(self) -> None:
        self._model = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _infer_impl(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        data = {
            name: to_image(value, self._images[name]) if name in self._images else value for name, value in feed.items()
        }
        result = self._model.predict(data)
        return [np.asarray(result[name]) for name in self.output_names]

    def facts(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "version": self._version,
            "providers": [self.compute_units],
            "threads": None,
            "compute_units": self.compute_units,
        }
