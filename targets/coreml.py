"""The iOS / macOS target: a Core ML ML program (.mlpackage) for the Neural Engine, GPU and CPU.

Precisions: fp32, fp16 (the Neural Engine's native type), w8 (int8 weights, linear symmetric per output
channel), w4 (4-bit palettized weights: one 16-entry k-means look-up table per weight tensor) and w8a8
(int8 weights and activations with the scales of the QuantSpec, as Core ML quantize/dequantize ops).

Routes to Core ML: the Model's torch module when it has one (fp32/fp16/w8/w4); otherwise, and always for
w8a8, the ONNX graph replayed in torch (`coreml_onnx`), so the QuantSpec's ONNX tensor names map one to one
onto the replay's tensors. Either route ends in coremltools' torch frontend (`coreml_convert`): what it cannot
convert is a BuildError naming the torch op. Core ML cannot predict on Linux: the traced program it converts is
validated against ONNX Runtime FP32 on the source model instead (`edgekit.targets.validation`, the manifest's
`validation`).

The .mlpackage is a folder; artifacts hold plain files, so it ships as `model.mlpackage.zip` (stored,
fixed timestamps and package item ids, so building twice gives the same bytes) and the device engine
unpacks it.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ModelError
from edgekit.onnx_toolbox import fixed_input_shape
from edgekit.op_support import Refusal
from edgekit.targets import register_target
from edgekit.targets.base import DEFAULTS, BuildAt, BuildError, Target, TargetOptions, translator_refusals
from edgekit.targets.coreml_convert import convert
from edgekit.targets.coreml_ops import REPLAY_OPS, SUPPORTED_OPS
from edgekit.targets.coreml_w8a8 import ReplayQuantizers, check_scales, replay_quantizers

if TYPE_CHECKING:
    import onnx

    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model

MODEL_FILE = "model.mlpackage.zip"
PACKAGE = "model.mlpackage"
# Weights smaller than this many elements stay float16 in w8/w4 (their compression saves nothing that
# matters and costs a dequantize op).
WEIGHT_THRESHOLD = 512
# A traced program at an enumerated shape must agree with the model to this (relative to its largest output).
REPLAY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CoreMLOptions(TargetOptions):
    """ios-coreml build options."""

    shapes: tuple[tuple[int, int], ...] | None = field(
        default=None,
        metadata={
            "help": "enumerated input sizes (HxW) besides the preprocess size, checked on the traced model",
            "flag": "--shapes",
            "example": "256x256,320x320",
        },
    )

    def check(self, precision: str) -> None:
        if self.shapes is None:
            return
        if not self.shapes:
            raise BuildError(f"{self.label('shapes')} is empty: give HxW sizes, e.g. -O shapes=224x224,320x320")
        for height, width in self.shapes:
            if height <= 0 or width <= 0:
                raise BuildError(f"{self.label('shapes', self.shapes)}: height and width must be positive")


@register_target
class CoreMLTarget(Target):
    name = "ios-coreml"
    description = "Core ML ML program (.mlpackage) for iPhone/iPad/Apple-silicon Macs: Neural Engine, GPU, CPU"
    device = "iPhone / iPad / Apple-silicon Mac"
    engine = "coreml"
    precisions = ("fp32", "fp16", "w8", "w4", "w8a8")
    quantized_precisions = ("w8a8",)
    # Core ML's quantize op takes int8 or uint8 with a zero point; symmetric int8 is what Apple's own
    # W8A8 path (coremltools.optimize linear_quantize_activations) produces and what the ANE runs.
    activation_scheme = "int8_sym"
    weight_scheme = "int8_per_channel"

    def supported_ops(self) -> set[tuple[str, str]]:
        return {("ai.onnx", op) for op in SUPPORTED_OPS}

    Options = CoreMLOptions

    def refusals(self, proto: onnx.ModelProto, at: BuildAt = DEFAULTS) -> list[Refusal]:
        """What the ONNX-to-torch replay cannot take, on the model at its build shape (shape arithmetic folded)."""
        return translator_refusals(proto, at.size, REPLAY_OPS)

    def model_refusals(
        self, model: Model, precision: str | None, options: TargetOptions | None = None
    ) -> list[Refusal]:
        if model.torch_module is not None and precision != "w8a8":
            return []  # coremltools converts the torch module itself; the ONNX graph is not replayed
        return super().model_refusals(model, precision, options)

    def ane_report(self, proto: onnx.ModelProto, precision: str | None = None) -> Any:
        """What of `proto` is known to fall back from the Neural Engine (see `edgekit.targets.coreml_ane`)."""
        from edgekit.targets.coreml_ane import ane_report

        return ane_report(proto, precision)

    def accelerator_fallbacks(self, proto: onnx.ModelProto) -> dict[str, dict[str, int]]:
        """Op types known to leave the Neural Engine for the GPU or CPU (`coreml_ane` names each rule's source)."""
        return {"ane": self.ane_report(proto).fallback_ops()}

    def accelerator_report(self, proto: onnx.ModelProto) -> dict[str, Any]:
        report = self.ane_report(proto)
        return {"accelerator": "ane", **report.to_dict(), "lines": report.lines()}

    def tool_versions(self) -> dict[str, str]:
        versions = super().tool_versions()
        try:
            import coremltools
            import torch

            versions.update(coremltools=coremltools.__version__, torch=torch.__version__.split("+")[0])
        except ImportError:
            pass
        return versions

    # -- build --------------------------------------------------------------------------------------

    def _build_impl(
        self, model: Model, precision: str, spec: QuantSpec | None, options: CoreMLOptions
    ) -> tuple[dict[str, bytes], dict]:
        ct, torch = _import_tools()
        resize = _spatial(model.preprocess) if model.preprocess else None
        try:
            shape = fixed_input_shape(model.proto, resize, layout=model.preprocess.layout if model.preprocess else None)
        except ModelError as exc:
            raise BuildError(f"ios-coreml: {exc}") from exc
        make_module, route, quantizers = self._torch_module(model, precision, spec, shape)
        input_name = _coreml_name(model.inputs[0].name)
        output_names = [_coreml_name(t.name) for t in model.outputs]
        image = _image_input(model.preprocess, shape)
        if image is not None and image["normalize_in_graph"]:
            make_module = _Normalize.around(torch, make_module, image["mean"], image["std"])
        module = make_module(shape)
        sizes = options.shapes
        shapes = _enumerated(shape, sizes) if sizes else None
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = _trace(torch, module, shape, route)
            if shapes:
                _check_traced_at(traced, make_module, shapes[1:], replay=route.startswith("onnx-replay"))
            validation = _validation(model, precision, traced, shape, image, route, spec)
            mlmodel = convert(
                ct,
                traced,
                route=route,
                inputs=[_input_type(ct, input_name, shape, image, shapes)],
                outputs=[ct.TensorType(name=name) for name in output_names],
                convert_to="mlprogram",
                minimum_deployment_target=ct.target.iOS17 if precision == "w8a8" else ct.target.iOS16,
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                skip_model_load=True,
            )
            try:
                mlmodel = _compress(ct, mlmodel, precision)
            except Exception as exc:  # coremltools' optimize passes: a clean error, not a traceback
                raise BuildError(f"coremltools could not compress the converted program to {precision}: {exc}") from exc
        mlmodel.short_description = f"edgekit {self.name} {precision} of model {model.sha256[:12]}"
        ops = program_ops(mlmodel)
        extra: dict[str, Any] = {
            "model_file": MODEL_FILE,
            "coreml": {
                "package": PACKAGE,
                "route": route,
                "deployment_target": "iOS17" if precision == "w8a8" else "iOS16",
                "compute_precision": "float32" if precision == "fp32" else "float16",
                "input": _input_summary(image),
                "compressed_weights": _compression_summary(ops, precision),
            },
            "outputs": [{**t.to_dict(), "name": n} for t, n in zip(model.outputs, output_names, strict=True)],
            "validation": validation,
        }
        extra["inputs"] = [_manifest_input(model, input_name, shape, image)]
        if shapes:
            extra["inputs"][0]["enumerated_shapes"] = [_manifest_shape(s, image) for s in shapes]
        extra["ane"] = self.ane_report(model.proto, precision).to_dict()
        if image is not None:
            extra["preprocess"] = image["agent_preprocess"]
        not_honoured: list[dict[str, str]] = []
        if precision == "w8a8":
            summary, not_honoured = check_scales(ops, spec, quantizers)
            extra["quantization"] = summary
        extra["not_honoured"] = not_honoured
        with tempfile.TemporaryDirectory(prefix="edgekit-coreml-") as tmp:
            package = Path(tmp) / PACKAGE
            mlmodel.save(str(package))
            data = zip_package(package)
        return {MODEL_FILE: data}, extra

    def _torch_module(
        self, model: Model, precision: str, quant_spec: QuantSpec | None, shape: tuple[int, ...]
    ) -> tuple[Callable[[tuple[int, ...]], Any], str, ReplayQuantizers | None]:
        """(module for an input shape, route, the w8a8 quantizers with the notes on what could not be honoured).
        The replay computes shapes for one input shape, hence a module per shape."""
        from edgekit.targets.coreml_onnx import build_module

        if precision == "w8a8":
            from edgekit.calibration.calibrate import prepare_float_model

            float_proto = prepare_float_model(model.proto, quant_spec)
            _checked_replay(model, float_proto, shape)  # the float replay, checked; quantized below
            quantizers = replay_quantizers(quant_spec, float_proto)

            def quantized(at: tuple[int, ...]) -> Any:
                return build_module(
                    float_proto, at, activation_quant=quantizers.activations, weight_quant=quantizers.weights
                )

            return quantized, "onnx-replay (prepared float graph of the QuantSpec)", quantizers
        if model.torch_module is not None:
            return lambda at: model.torch_module, "torch module", None
        module = build_module(model.proto, shape)  # checked with the traced program by `_validation`
        return lambda at: module if at == shape else build_module(model.proto, at), "onnx-replay", None


# -- tools ----------------------------------------------------------------------------------------------


def _import_tools() -> tuple[Any, Any]:
    try:
        import torch
    except ImportError as exc:
        raise BuildError("ios-coreml converts through PyTorch: pip install 'edgekit[torch,coreml]'") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
    except ImportError as exc:
        raise BuildError("ios-coreml needs coremltools: pip install 'edgekit[coreml]'") from exc
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct, torch


def _trace(torch: Any, module: Any, shape: tuple[int, ...], route: str) -> Any:
    """torch.jit.trace of the module (what coremltools converts); a BuildError saying why when it fails."""
    try:
        return torch.jit.trace(module.eval(), torch.zeros(shape), check_trace=False)
    except BuildError:
        raise
    except Exception as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        other = "its ONNX export (the replay)" if route == "torch module" else "the torch module (Model.from_torch)"
        raise BuildError(f"ios-coreml could not trace the {route} at input {list(shape)}: {said}; try {other}") from exc


def _checked_replay(model: Model, float_proto: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    """w8a8: the float replay of the QuantSpec's prepared graph must match ONNX Runtime FP32 on the source (the fp32
    budget; a BuildError otherwise) before its quantized twin is converted."""
    from edgekit.targets.coreml_onnx import build_module
    from edgekit.targets.validation import RAN_COREML_REPLAY, probe_inputs, validate

    module = build_module(float_proto, shape)
    probes = probe_inputs(model, {model.inputs[0].name: shape}, count=2)
    validate(model, "fp32", _torch_runner(module), ran=RAN_COREML_REPLAY, probes=probes)


def _torch_runner(module: Any, mean: list[float] | None = None, std: list[float] | None = None) -> Any:
    """A validation runner over a torch module: feeds in the ONNX model's layout (with `mean`/`std`, the module
    normalizes itself and takes `x * std + mean`), outputs as a list of arrays."""
    import torch

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feed.values()
        if mean is not None and std is not None:
            x = x * np.asarray(std, np.float32).reshape(1, -1, 1, 1) + np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return run


def _validation(
    model: Model,
    precision: str,
    traced: Any,
    shape: tuple[int, ...],
    image: dict[str, Any] | None,
    route: str,
    spec: QuantSpec | None,
) -> dict[str, Any]:
    """The traced program Core ML converts (Core ML cannot predict on Linux) vs ONNX Runtime FP32 on the source."""
    from edgekit.targets.validation import RAN_COREML_REPLAY, RAN_COREML_TORCH, probe_inputs, validate

    normalize = image is not None and image["normalize_in_graph"]
    run = _torch_runner(traced, image["mean"], image["std"]) if normalize else _torch_runner(traced)
    ran = RAN_COREML_TORCH if route == "torch module" else RAN_COREML_REPLAY
    probes = probe_inputs(model, {model.inputs[0].name: shape}, spec)
    block = validate(model, precision, run, ran=ran, probes=probes)
    if precision != "fp32":
        block["not_covered"] = (
            "Core ML's float16 compute" + (" and weight compression" if precision in ("w8", "w4") else "") + " happen "
            "in the converter after this point; the traced program runs in float32 here"
        )
    return block


def _compress(ct: Any, mlmodel: Any, precision: str) -> Any:
    from coremltools.optimize import coreml as cto

    if precision == "w8":
        op = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
        )
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    if precision == "w4":
        op = cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    return mlmodel


# -- names, inputs and preprocessing --------------------------------------------------------------------


def _coreml_name(name: str) -> str:
    """Core ML feature names are identifiers: other characters become '_'."""
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def _spatial(preprocess: Any) -> list[int] | None:
    size = preprocess.fixed_input_size  # crop, stretch or letterbox: every frame gives this size
    return list(size) if size is not None else None


def _image_input(preprocess: Any, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """How the preprocessing folds into a Core ML image input, or None for a plain tensor input.

    Core ML computes `scale * pixel + bias[c]` with ONE scale for all channels. When every std is equal
    the whole (pixel * s - mean) / std folds in exactly; with per-channel std (ImageNet) the image input
    takes `pixel * s` and the `(x - mean) / std` goes into the graph as the first op, which stays exact
    and runs on the Neural Engine like any elementwise op.
    """
    if preprocess is None or preprocess.layout != "NCHW" or preprocess.dtype != "float32" or len(shape) != 4:
        return None
    channels = shape[1]
    if channels != preprocess.channels or _spatial(preprocess) != [shape[2], shape[3]]:
        return None
    mean = preprocess.mean * channels if len(preprocess.mean) == 1 else list(preprocess.mean)
    std = preprocess.std * channels if len(preprocess.std) == 1 else list(preprocess.std)
    uniform = len(set(std)) == 1
    agent = {**preprocess.to_dict(), "scale": 1.0, "mean": [0.0], "std": [1.0], "layout": "NHWC", "dtype": "uint8"}
    agent["color"] = "GRAY" if channels == 1 else "RGB"  # the engine hands Core ML an RGB/L image
    return {
        "color": preprocess.color,
        "scale": preprocess.scale / std[0] if uniform else preprocess.scale,
        "bias": [-m / s for m, s in zip(mean, std, strict=True)] if uniform else [0.0] * channels,
        "normalize_in_graph": not uniform,
        "mean": mean,
        "std": std,
        "agent_preprocess": agent,
    }


def _input_type(
    ct: Any, name: str, shape: tuple[int, ...], image: dict[str, Any] | None, shapes: list[tuple[int, ...]] | None
) -> Any:
    """The Core ML input: fixed `shape`, or the enumerated `shapes` with `shape` as the default."""
    dims: Any = ct.EnumeratedShapes(shapes=shapes, default=shape) if shapes else shape
    if image is None:
        return ct.TensorType(name=name, shape=dims)
    layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "GRAY": ct.colorlayout.GRAYSCALE}[image["color"]]
    bias = image["bias"][0] if image["color"] == "GRAY" else image["bias"]
    return ct.ImageType(name=name, shape=dims, scale=image["scale"], bias=bias, color_layout=layout)


def _enumerated(shape: tuple[int, ...], sizes: tuple[tuple[int, int], ...]) -> list[tuple[int, ...]]:
    """Full NCHW input shapes for `sizes`, the default `shape` first (Core ML needs it among them)."""
    if len(shape) != 4:
        raise BuildError(f"--shapes needs a 4-D NCHW image input; this model's input is {list(shape)}")
    shapes = [shape] + [(shape[0], shape[1], h, w) for h, w in sizes]
    return list(dict.fromkeys(shapes))


def _check_traced_at(
    traced: Any, make_module: Callable[[tuple[int, ...]], Any], shapes: list[tuple[int, ...]], *, replay: bool
) -> None:
    """The traced program (what Core ML converts) must compute, at each enumerated shape, what the model computes
    there: a trace that froze a size of the default shape (a flatten to a fixed width, an upsample to fixed
    sizes) is refused."""
    import torch

    # the ONNX replay computes the graph's shape arithmetic (resize sizes, reshape targets) for one input size
    fix = (
        "build from the torch module (Model.from_torch), whose trace keeps that arithmetic, or drop this size"
        if replay
        else "drop this size or make the model size-independent (global pooling before the classifier)"
    )
    for shape in shapes:
        probe = torch.from_numpy(np.random.default_rng(2).random(shape, dtype=np.float32))
        size = f"{shape[2]}x{shape[3]}"
        try:
            expected = make_module(shape).eval()(probe)
        except Exception as exc:
            raise BuildError(f"--shapes {size}: the model does not run at this size ({exc})") from exc
        try:
            got = traced(probe)
        except Exception as exc:
            raise BuildError(
                f"--shapes {size}: the traced program froze a size of the default input (it fails at {size}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {fix}"
            ) from exc
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        peak = max(1.0, *(float(e.abs().max()) for e in expected))
        error = max(
            float((e - g).abs().max()) if e.shape == g.shape else float("inf")
            for e, g in zip(expected, got, strict=True)
        )
        if not error <= REPLAY_TOLERANCE * peak:
            what = "an output of another shape" if math.isinf(error) else f"other values (max abs error {error:.3g})"
            raise BuildError(
                f"--shapes {size}: the traced program gives {what} at this size; it froze a size of the default "
                f"input: {fix}"
            )


def _manifest_shape(shape: tuple[int, ...], image: dict[str, Any] | None) -> list[int]:
    return [shape[0], shape[2], shape[3], shape[1]] if image is not None else list(shape)


def _input_summary(image: dict[str, Any] | None) -> dict[str, Any]:
    if image is None:
        return {"kind": "tensor"}
    return {
        "kind": "image",
        "color_layout": image["color"],
        "scale": image["scale"],
        "bias": image["bias"],
        "normalize_in_graph": {"mean": image["mean"], "std": image["std"]} if image["normalize_in_graph"] else None,
    }


def _manifest_input(model: Model, name: str, shape: tuple[int, ...], image: dict[str, Any] | None) -> dict:
    if image is None:
        entry = {"name": name, "shape": list(shape), "dtype": "float32"}
        if model.preprocess is not None and len(shape) == 4:
            entry["layout"] = model.preprocess.layout
        return entry
    return {"name": name, "shape": [1, shape[2], shape[3], shape[1]], "dtype": "uint8", "layout": "NHWC"}


class _Normalize:
    @staticmethod
    def around(torch: Any, make_module: Callable[[tuple[int, ...]], Any], mean: list[float], std: list[float]) -> Any:
        return lambda at: _Normalize.wrap(torch, make_module(at), mean, std)

    @staticmethod
    def wrap(torch: Any, module: Any, mean: list[float], std: list[float]) -> Any:
        class Normalized(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module
                self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
                self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

            def forward(self, x: Any) -> Any:
                return self.inner((x - self.mean) * self.inv_std)

        return Normalized()


def program_ops(mlmodel: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(op type, first output name, {input name: numpy value of const inputs}) for every op of `main`."""
    from coremltools.converters.mil.frontend.milproto import load as milproto

    spec = mlmodel.get_spec()
    program = milproto.load(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    found = []

    def visit(block: Any) -> None:
        for op in block.operations:
            values = {}
            for key, var in op.inputs.items():
                if not isinstance(var, (list, tuple)) and getattr(var, "val", None) is not None:
                    values[key] = np.asarray(var.val)
            found.append((op.op_type, op.outputs[0].name if op.outputs else "", values))
            for inner in op.blocks:
                visit(inner)

    visit(program.functions["main"])
    return found


def _compression_summary(ops: list[tuple[str, str, dict]], precision: str) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for op_type, _, _ in ops:
        if op_type.startswith("constexpr_"):
            counts[op_type] = counts.get(op_type, 0) + 1
    summary: dict[str, Any] = {"constexpr_ops": dict(sorted(counts.items()))}
    if precision == "w8":
        summary.update(scheme="int8 linear symmetric, per output channel", weight_threshold=WEIGHT_THRESHOLD)
    elif precision == "w4":
        summary.update(
            scheme="4-bit palettized, k-means, one 16-entry LUT per tensor", weight_threshold=WEIGHT_THRESHOLD
        )
    elif precision == "w8a8":
        summary.update(scheme="int8 symmetric per output channel, scales from the QuantSpec")
    return summary


# -- packaging -----------------------------------------------------------------------------------------


def zip_package(package: Path) -> bytes:
    """The .mlpackage folder as deterministic zip bytes: sorted entries, fixed times, fixed item ids."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = manifest.get("itemInfoEntries", {})
    renamed = {
        old: str(uuid.uuid5(uuid.NAMESPACE_URL, "edgekit:" + item["path"])).upper() for old, item in entries.items()
    }
    manifest["itemInfoEntries"] = {
        renamed[old]: item for old, item in sorted(entries.items(), key=lambda kv: renamed[kv[0]])
    }
    manifest["rootModelIdentifier"] = renamed.get(
        manifest.get("rootModelIdentifier"), manifest.get("rootModelIdentifier")
    )
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in package.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{PACKAGE}/{path.relative_to(package).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def unzip_package(data: bytes, into: Path) -> Path:
    """Unpack `model.mlpackage.zip` bytes into `into`; returns the .mlpackage folder (for tests and tools)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(into)
    return into / PACKAGE
