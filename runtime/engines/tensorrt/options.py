"""The TensorRT engine's options: checked and filled with defaults before anything touches TensorRT or CUDA.

Pure Python (no TensorRT, no CUDA), so the host and tests check a plan's options the way the device will.
Python 3.8-compatible.
"""

import os
from typing import Any, Dict, List, Optional

from ..base import EngineError

PRECISIONS = ("fp32", "fp16", "int8")
TRTEXEC_MODES = ("auto", "never", "always")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "edgekit", "trt-engines")

_OPTIONS = (
    "precision",
    "calibration_cache",
    "dla_core",
    "gpu_fallback",
    "sparsity",
    "workspace_mb",
    "profile_shapes",
    "cache_dir",
    "use_trtexec",
    "layer_profile",
    "threads",  # the agent passes plan engine.threads to every engine; TensorRT has no such knob: ignored
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_profile_shapes(value: Any) -> Optional[Dict[str, List[List[int]]]]:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise EngineError("tensorrt profile_shapes must be an object {input: [min, opt, max]}, got %r" % (value,))
    shapes: Dict[str, List[List[int]]] = {}
    for name, triple in value.items():
        ok = isinstance(triple, (list, tuple)) and len(triple) == 3
        ok = ok and all(isinstance(s, (list, tuple)) and s and all(_is_int(d) and d > 0 for d in s) for s in triple)
        if not ok or len(set(len(s) for s in triple)) != 1:
            raise EngineError(
                "tensorrt profile_shapes[%r] must be three shapes of the same rank with positive ints, "
                "[min, opt, max], e.g. [[1,3,224,224],[4,3,224,224],[8,3,224,224]]; got %r" % (name, triple)
            )
        low, opt, high = ([int(d) for d in s] for s in triple)
        if any(not (low[i] <= opt[i] <= high[i]) for i in range(len(low))):
            raise EngineError(
                "tensorrt profile_shapes[%r]: need min <= opt <= max on every axis, got %r" % (name, triple)
            )
        shapes[str(name)] = [low, opt, high]
    return shapes


def validate_options(options: Dict[str, Any], model_dir: str = ".") -> Dict[str, Any]:
    """Check the plan's engine options and fill in defaults; raises EngineError naming the bad one.

    A relative `calibration_cache` is taken relative to the model's folder (the artifact)."""
    unknown = sorted(k for k in options if k not in _OPTIONS)
    if unknown:
        raise EngineError("tensorrt engine options %s are unknown; known: %s" % (unknown, ", ".join(_OPTIONS)))
    opts = dict(options)
    precision = opts.get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise EngineError("tensorrt precision %r: use one of %s" % (precision, ", ".join(PRECISIONS)))
    dla_core = opts.get("dla_core")
    if dla_core is not None and not (_is_int(dla_core) and dla_core >= 0):
        raise EngineError("tensorrt dla_core must be null or a DLA core number (0, 1), got %r" % (dla_core,))
    if dla_core is not None and precision == "fp32":
        raise EngineError("tensorrt dla_core needs precision fp16 or int8: the DLA does not run fp32")
    flags = {}
    for key in ("gpu_fallback", "sparsity", "layer_profile"):
        flags[key] = opts.get(key, False)
        if not isinstance(flags[key], bool):
            raise EngineError("tensorrt %s must be true or false, got %r" % (key, flags[key]))
    if flags["gpu_fallback"] and dla_core is None:
        raise EngineError("tensorrt gpu_fallback only applies with dla_core: set dla_core or drop gpu_fallback")
    workspace = opts.get("workspace_mb")
    if workspace is not None and not (_is_int(workspace) and workspace > 0):
        raise EngineError("tensorrt workspace_mb must be a positive integer (MiB), got %r" % (workspace,))
    mode = opts.get("use_trtexec") or "auto"
    if mode not in TRTEXEC_MODES:
        raise EngineError("tensorrt use_trtexec %r: use one of %s" % (mode, ", ".join(TRTEXEC_MODES)))
    calib = opts.get("calibration_cache")
    if calib is not None:
        if not isinstance(calib, str) or not calib:
            raise EngineError("tensorrt calibration_cache must be a file path, got %r" % (calib,))
        calib = os.path.join(model_dir, os.path.expanduser(calib))
        if not os.path.isfile(calib):
            raise EngineError(
                "tensorrt calibration_cache %s does not exist: push it with the artifact (edgekit quantize writes "
                "trt_calibration.cache) or drop the option" % calib
            )
        if precision != "int8":
            raise EngineError("tensorrt calibration_cache is only used with precision int8, not %s" % precision)
    cache_dir = opts.get("cache_dir") or DEFAULT_CACHE_DIR
    if not isinstance(cache_dir, str):
        raise EngineError("tensorrt cache_dir must be a folder path, got %r" % (cache_dir,))
    return {
        "precision": precision,
        "calibration_cache": calib,
        "dla_core": dla_core,
        "gpu_fallback": flags["gpu_fallback"],
        "sparsity": flags["sparsity"],
        "workspace_mb": workspace,
        "profile_shapes": _check_profile_shapes(opts.get("profile_shapes")),
        "cache_dir": os.path.expanduser(cache_dir),
        "use_trtexec": mode,
        "layer_profile": flags["layer_profile"],
    }
