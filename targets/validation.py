"""One validation for every target: the artifact's outputs against ONNX Runtime FP32 on the source model.

Each target hands `validate` a function that runs what it built on a feed in the source model's own input
layout (the .tflite in LiteRT, the QDQ model in ONNX Runtime) or, where the artifact cannot run on this Linux
machine, the last thing that does (the torch module Core ML converts; the ONNX TensorRT parses, in ONNX
Runtime). The reference is ONNX Runtime on the source model with graph optimisations off. The probes are a few
real images (edgekit's own held-out digits, drawn into frames) brought through the model's preprocessing
where it has a spec whose output fits the input, else seeded random inputs (uniform over the calibrated input
range when a QuantSpec has one).

Budgets, per output (issue 15): fp32: max abs error <= 1e-4 of the reference output's range (or <= 1e-3 of it
with SQNR >= 80 dB: other float32 kernels stray that far on a few of millions of outputs); fp16: SQNR >=
40 dB; bf16 (x86-openvino): SQNR >= 20 dB; quantized precisions (int8, w8, w4, w8a8): SQNR >= 20 dB, or top-1
agreement >= 0.95 for a classifier's scores. An fp32 build outside its budget is a converter defect: `validate`
raises BuildError naming the output, the figure and the budget, so nothing is written. An fp16, bf16 or
quantized build outside its budget is recorded with `passed: false` (the CLI warns): precision loss is the
user's trade-off to see.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.targets.base import BuildError

if TYPE_CHECKING:
    import onnx

    from edgekit.calibration.quant_spec import QuantSpec
    from edgekit.model import Model

PROBES = 8
LARGE_INPUT = 3 * 320 * 320  # inputs at least this many elements get PROBES_LARGE probes (builds stay fast)
PROBES_LARGE = 4
FP32_RELATIVE_ERROR = 1e-4  # of the reference output's range
# Another runtime's float32 kernels (XNNPACK's approximated sigmoid, other summation orders) stray further on a
# few of millions of outputs: PP-OCR's text detector through LiteRT, 640x640 probability maps of real pages,
# max abs 1.9e-4 at 93.9 dB. Such an output still passes; a converter defect shows in the SQNR too.
FP32_RELATIVE_ERROR_WIDE = 1e-3
FP32_SQNR_DB = 80.0
FP16_SQNR_DB = 40.0
QUANTIZED_SQNR_DB = 20.0
# bfloat16 keeps 8 significant bits (float16: 11): its rounding noise is of an 8-bit grid's order, so it has the
# quantized precisions' SQNR budget
BF16_SQNR_DB = QUANTIZED_SQNR_DB
QUANTIZED_TOP1 = 0.95
# outside budget a converter defect, and the build fails; fp16 and quantized builds outside budget are written,
# marked passed: false and warned about (half precision loses more on some real models: PP-OCR's text detector
# comes out of TFLite fp16 and TensorRT-like float16 weights at 38 dB, with no converter at fault)
FLOAT_PRECISIONS = ("fp32",)

# What ran, as manifests say it.
RAN_LITERT = "LiteRT interpreter"
RAN_ORT = "ONNX Runtime on the artifact's ONNX model"
RAN_ORT_QDQ = "ONNX Runtime on the QDQ model"
RAN_COREML_REPLAY = "torch replay of the ONNX graph (Core ML cannot run on Linux)"
RAN_COREML_TORCH = "the traced torch module Core ML converts (Core ML cannot run on Linux)"
RAN_TENSORRT = "ONNX Runtime on the emitted ONNX (TensorRT not installed here)"
RAN_OPENVINO = "OpenVINO CPU on the IR"  # x86-openvino adds the inference precision that ran

Runner = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


@dataclass
class Probes:
    """Probe feeds (batch 1, the source model's input names and layout) and where they came from."""

    feeds: list[dict[str, np.ndarray]]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": len(self.feeds)}


def validate_build(
    model: Model,
    precision: str,
    run: Runner,
    *,
    ran: str,
    spec: QuantSpec | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """`validate` on probes made for `model` at `shapes` (default: its inputs fixed by `probe_shapes`). A model
    whose input sizes cannot be fixed (free dims and no preprocess size) gets a block that says so."""
    if shapes is None:
        shapes_or_reason = probe_shapes(model)
        if isinstance(shapes_or_reason, str):
            return {"ran": ran, "precision": precision, "skipped": shapes_or_reason, "passed": None}
        shapes = shapes_or_reason
    return validate(model, precision, run, ran=ran, probes=probe_inputs(model, shapes, spec))


def probe_shapes(model: Model) -> dict[str, tuple[int, ...]] | str:
    """Each input's shape with a free batch as 1 and free image sizes from the preprocessing, or why not."""
    from edgekit.errors import ModelError
    from edgekit.onnx_toolbox import fixed_input_shape

    spec = model.preprocess
    if len(model.inputs) == 1:
        resize = list(spec.fixed_input_size) if spec is not None and spec.fixed_input_size else None
        try:
            return {model.inputs[0].name: fixed_input_shape(model.proto, resize, layout=spec.layout if spec else None)}
        except ModelError as exc:
            return f"not validated: {exc}"
    shapes = {}
    for tensor in model.inputs:
        dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(tensor.shape)]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            return f"not validated: input {tensor.name!r} has free dimensions {list(tensor.shape)}"
        shapes[tensor.name] = tuple(dims)
    return shapes


# -- probes ----------------------------------------------------------------------------------------------


def probe_inputs(
    model: Model, shapes: dict[str, tuple[int, ...]], spec: QuantSpec | None = None, count: int | None = None
) -> Probes:
    """Probe feeds at the fixed input `shapes` (one per model input, batch 1, the model's layout)."""
    if count is None:
        largest = max((math.prod(s) for s in shapes.values()), default=0)
        count = PROBES_LARGE if largest >= LARGE_INPUT else PROBES
    names = [t.name for t in model.inputs]
    dtypes = {t.name: np.dtype(t.dtype) for t in model.inputs}
    own = [f for f in model.validation_feeds or () if all(np.shape(f.get(n)) == tuple(shapes[n]) for n in names)]
    if own:
        own = own[-count:]
        return Probes(own, f"{len(own)} of the calibration samples given to the build (the QuantSpec saw them)")
    images = _image_probes(model, shapes[names[0]], count) if len(names) == 1 else None
    if images is not None:
        return Probes([{names[0]: image} for image in images], f"{count} {_IMAGE_SOURCE} through its preprocessing")
    rng = np.random.default_rng(0)
    feeds = [{name: _random(rng, shapes[name], dtypes[name], spec, name) for name in names} for _ in range(count)]
    ranged = spec is not None and any(_observed(spec, name) for name in names)
    return Probes(feeds, "seeded random inputs" + (" over the calibrated input range" if ranged else ""))


_IMAGE_SOURCE = "frames of edgekit's held-out MNIST digits (edgekit/assets)"


def _image_probes(model: Model, shape: tuple[int, ...], count: int) -> list[np.ndarray] | None:
    """`count` real frames through the model's preprocessing, or None when it has no spec or the spec's
    output does not fit `shape` (then random probes are used)."""
    spec = model.preprocess
    if spec is None or len(shape) != 4:
        return None
    import cv2

    from edgekit.demo_data import detection_frames, load_heldout_digits
    from edgekit.runtime.preprocess import PreprocessError, preprocess

    height, width = shape[2:] if spec.layout == "NCHW" else shape[1:3]
    if max(height, width) < 64:  # a digit-sized input: one held-out digit per frame
        digits, _ = load_heldout_digits()
        grays = [cv2.resize(d, (112, 112), interpolation=cv2.INTER_CUBIC) for d in digits[-count:]]
    else:  # 1-4 digits drawn at several scales over a textured background
        grays = [f.image for f in detection_frames(count, size=max(160, height, width))]
    try:
        tensors = [preprocess(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), spec) for gray in grays]
    except PreprocessError:
        return None
    dtype = np.dtype(model.inputs[0].dtype)
    if any(tuple(t.shape) != tuple(shape) or t.dtype != dtype for t in tensors):
        return None
    return tensors


def _observed(spec: QuantSpec, name: str) -> tuple[float, float] | None:
    entry = spec.tensors.get(name)
    return tuple(entry.observed) if entry is not None and entry.observed else None


def _random(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, spec: QuantSpec | None, name: str
) -> np.ndarray:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape).astype(dtype)
    observed = _observed(spec, name) if spec is not None else None
    if observed is not None:
        return rng.uniform(observed[0], observed[1], size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# -- the reference and the comparison -------------------------------------------------------------------


def reference_outputs(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """ONNX Runtime FP32 on `proto` (graph optimisations off), one list of outputs per feed."""
    return OrtRunner(proto, optimize=False).run_all(feeds)


class OrtRunner:
    """A runner over an ONNX model in ONNX Runtime's CPU provider (`optimize`: ORT's default graph optimisations,
    what the device's session does)."""

    def __init__(self, proto: onnx.ModelProto | bytes, *, optimize: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        data = proto if isinstance(proto, bytes) else proto.SerializeToString()
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BuildError(f"ONNX Runtime cannot load the model to validate ({type(exc).__name__}: {exc})") from exc

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feed)

    def run_all(self, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        return [self(feed) for feed in feeds]


class OpenVinoRunner:
    """A runner over an OpenVINO IR (model.xml text and model.bin bytes) compiled for this machine's CPU with the
    inference precision `hint` (f32, f16, bf16); `inference_precision` is what OpenVINO reports it runs at (a
    CPU without f16 runs an f16 hint at f32)."""

    def __init__(self, xml: bytes, weights: bytes, hint: str, *, threads: int | None = None) -> None:
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            model = core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises its own GeneralFailure types
            raise BuildError(f"OpenVINO cannot compile the IR to validate ({type(exc).__name__}: {exc})") from exc
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.request = self.compiled.create_infer_request()

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feed)
        return [np.array(results[output]) for output in self.compiled.outputs]


def budget_for(precision: str, classifier: bool) -> dict[str, Any]:
    """The budget of one output at `precision`: the rule in words and its figures."""
    if precision == "fp32":
        return {
            "rule": f"max abs error <= 1e-4 of the output range, or <= 1e-3 of it at SQNR >= {FP32_SQNR_DB:g} dB",
            "max_abs_error_of_range": FP32_RELATIVE_ERROR,
            "or": {"max_abs_error_of_range": FP32_RELATIVE_ERROR_WIDE, "sqnr_db": FP32_SQNR_DB},
        }
    if precision == "fp16":
        return {"rule": f"SQNR >= {FP16_SQNR_DB:g} dB", "sqnr_db": FP16_SQNR_DB}
    if precision == "bf16":
        return {"rule": f"SQNR >= {BF16_SQNR_DB:g} dB", "sqnr_db": BF16_SQNR_DB}
    if classifier:
        return {
            "rule": f"SQNR >= {QUANTIZED_SQNR_DB:g} dB or top-1 agreement >= {QUANTIZED_TOP1:g}",
            "sqnr_db": QUANTIZED_SQNR_DB,
            "top1_agreement": QUANTIZED_TOP1,
        }
    return {"rule": f"SQNR >= {QUANTIZED_SQNR_DB:g} dB", "sqnr_db": QUANTIZED_SQNR_DB}


def output_figures(
    name: str, reference: list[np.ndarray], got: list[np.ndarray], precision: str, classifier: bool
) -> dict[str, Any]:
    """The figures of one output over all probes (`reference`, `got`: one array per probe) and its verdict."""
    budget = budget_for(precision, classifier)
    entry: dict[str, Any] = {"name": name}
    shapes = {tuple(np.shape(g)) for g in got} | {tuple(np.shape(r)) for r in reference}
    try:
        ref = np.stack([np.asarray(r, np.float64) for r in reference])
        out = np.stack([np.asarray(g, np.float64).reshape(np.shape(r)) for g, r in zip(got, reference, strict=True)])
    except ValueError:
        return {**entry, "problem": f"shapes differ: {sorted(shapes)}", "budget": budget, "passed": False}
    if not np.all(np.isfinite(out)):
        return {**entry, "problem": "non-finite values", "budget": budget, "passed": False}
    error = np.abs(out - ref)
    noise = float(np.sum(error**2))
    signal = float(np.sum(ref**2))
    entry.update(
        max_abs_error=float(error.max(initial=0.0)),
        range=float(ref.max(initial=0.0) - ref.min(initial=0.0)),
        reference_abs_max=float(np.abs(ref).max(initial=0.0)),
        sqnr_db=None if noise == 0.0 else round(10.0 * math.log10(max(signal, 1e-30) / noise), 2),
    )
    if classifier and ref.ndim == 3 and ref.shape[-1] > 1:  # (probe, batch, classes)
        entry["top1_agreement"] = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
    entry["budget"] = budget
    entry["passed"] = _within(entry, budget)
    return entry


def _within(entry: dict[str, Any], budget: dict[str, Any]) -> bool:
    if "max_abs_error_of_range" in budget:
        if entry["max_abs_error"] <= budget["max_abs_error_of_range"] * entry["range"]:
            return True
        wide = budget.get("or")
        sqnr = entry["sqnr_db"]
        return (
            bool(wide)
            and entry["max_abs_error"] <= wide["max_abs_error_of_range"] * entry["range"]
            and (sqnr is None or sqnr >= wide["sqnr_db"])
        )
    sqnr = entry["sqnr_db"]
    if sqnr is None or sqnr >= budget["sqnr_db"]:  # None: no error at all
        return True
    return "top1_agreement" in budget and entry.get("top1_agreement", 0.0) >= budget["top1_agreement"]


def validate(
    model: Model,
    precision: str,
    run: Runner,
    *,
    ran: str,
    probes: Probes,
    reference: list[list[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """The manifest's `validation` block: `run` (outputs in the model's output order) against ONNX Runtime FP32
    on `model` for every probe. fp32 outside budget raises BuildError naming output, figure and budget; fp16
    and quantized precisions come back with `passed: false`."""
    if reference is None:
        reference = reference_outputs(model.proto, probes.feeds)
    try:
        got = [list(run(feed)) for feed in probes.feeds]
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"validation: the {ran} failed on a probe input ({type(exc).__name__}: {exc})") from exc
    names = [t.name for t in model.outputs]
    if any(len(g) != len(names) for g in got):
        raise BuildError(f"validation: the {ran} gave {len(got[0])} outputs; the model has {len(names)}")
    classifier = (model.task or {}).get("task") == "classify"
    outputs = [
        output_figures(name, [r[i] for r in reference], [g[i] for g in got], precision, classifier)
        for i, name in enumerate(names)
    ]
    block = {
        "ran": ran,
        "reference": "ONNX Runtime FP32 on the source model",
        "precision": precision,
        "probes": probes.to_dict(),
        "outputs": outputs,
        "passed": all(o["passed"] for o in outputs),
        **_summary(outputs, len(probes.feeds)),
    }
    if precision in FLOAT_PRECISIONS and not block["passed"]:
        raise BuildError(failure_message(block))
    return block


def _summary(outputs: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """The worst figures over all outputs (what one line shows; older readers read these keys)."""
    summary: dict[str, Any] = {"inputs": count}
    measured = [o for o in outputs if "max_abs_error" in o]
    if measured:
        summary["max_abs_error"] = max(o["max_abs_error"] for o in measured)
        summary["reference_abs_max"] = max(o["reference_abs_max"] for o in measured)
        sqnrs = [o["sqnr_db"] for o in measured if o["sqnr_db"] is not None]
        summary["sqnr_db"] = min(sqnrs) if sqnrs else None
    agreements = [o["top1_agreement"] for o in outputs if "top1_agreement" in o]
    if agreements:
        summary["top1_agreement"] = min(agreements)
    return summary


def figure_text(output: dict[str, Any]) -> str:
    """One output's figures in words: 'max abs error 3.1e-06 (range 12.5), SQNR 98.2 dB, top-1 1.00'."""
    if "problem" in output:
        return output["problem"]
    sqnr = "exact" if output["sqnr_db"] is None else f"SQNR {output['sqnr_db']:.1f} dB"
    text = f"max abs error {output['max_abs_error']:.3g} (range {output['range']:.3g}), {sqnr}"
    if "top1_agreement" in output:
        text += f", top-1 agreement {output['top1_agreement']:.2f}"
    return text


def failure_message(block: dict[str, Any]) -> str:
    """A float build outside budget: which output, its figure, the budget, and what it means."""
    failed = [o for o in block["outputs"] if not o["passed"]]
    lines = [f"  - output {o['name']!r}: {figure_text(o)}; budget {o['budget']['rule']}" for o in failed]
    return (
        f"validation of this {block['precision']} build failed against ONNX Runtime FP32 ({block['ran']}, "
        f"{block['probes']['count']} probes of {block['probes']['source']}):\n" + "\n".join(lines) + "\n"
        "a float conversion must match the source model: this is a converter defect, please report it"
    )


def summary_lines(block: dict[str, Any] | None) -> list[str]:
    """What `edgekit build` prints about a manifest's validation block, in two lines (none without a block):
    the verdict, what ran against what on which probes; then the worst output's figures against the budget
    (every output outside it, when some are)."""
    if not block or "outputs" not in block:
        return []
    verdict = "passed" if block["passed"] else "OUTSIDE BUDGET"
    probes = block["probes"]
    first = (
        f"validation {verdict}: {block.get('precision', 'the')} build ({block['ran']}) vs ONNX Runtime FP32 on "
        f"{probes['count']} probes ({probes['source']})"
    )
    outputs = block["outputs"]
    failed = [o for o in outputs if not o["passed"]]
    shown = failed or [min(outputs, key=_closeness)]
    figures = "; ".join(f"{o['name']} {figure_text(o)}" for o in shown)
    if failed:
        which = f"{len(failed)} of {len(outputs)} outputs outside the budget"
    else:
        which = "the one output" if len(outputs) == 1 else f"worst of {len(outputs)} outputs"
    rule = shown[0].get("budget", {}).get("rule", "none")
    return [first, f"  {which}: {figures} (budget: {rule})"]


def _closeness(output: dict[str, Any]) -> float:
    """How close an output came to the FP32 one (lower is worse): SQNR, exact as infinity, a problem as -inf."""
    if "problem" in output:
        return float("-inf")
    return float("inf") if output.get("sqnr_db") is None else float(output["sqnr_db"])
