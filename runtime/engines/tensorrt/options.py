"""The TensorRT engine's options: checked and filled with defaults before anything touches TensorRT or CUDA.

Pure Python (no TensorRT, no CUDA), so the host and tests check a plan's options the way the device will.
Python 3.8-compatible.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..base import EngineError, EngineOptions, read_options

PRECISIONS = ("fp32", "fp16", "int8")
TRTEXEC_MODES = ("auto", "never", "always")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "edgekit", "trt-engines")


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


def _help(text: str) -> Dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TensorRtOptions(EngineOptions):
    """The engine options of `tensorrt` (`threads` is accepted and ignored: TensorRT has no such knob)."""

    precision: str = field(default="fp32", metadata=_help("fp32, fp16 or int8"))
    calibration_cache: Optional[str] = field(
        default=None, metadata=_help("int8: TensorRT calibration cache, relative to the artifact folder")
    )
    dla_core: Optional[int] = field(default=None, metadata=_help("run on this DLA core (0, 1); fp16 or int8"))
    gpu_fallback: bool = field(default=False, metadata=_help("with dla_core: layers the DLA lacks run on the GPU"))
    sparsity: bool = field(default=False, metadata=_help("let TensorRT pick 2:4 sparse kernels"))
    workspace_mb: Optional[int] = field(default=None, metadata=_help("builder workspace limit in MiB"))
    profile_shapes: Optional[Dict[str, List[List[int]]]] = field(
        default=None, metadata=_help("{input: [min, opt, max]} shapes of the optimization profile")
    )
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata=_help("where built engines are cached"))
    use_trtexec: str = field(default="auto", metadata=_help("auto, never or always build with trtexec"))
    layer_profile: bool = field(default=False, metadata=_help("time each layer (TensorRT's profiler)"))

    def check(self) -> None:
        EngineOptions.check(self)
        if self.precision not in PRECISIONS:
            raise EngineError("tensorrt precision %r: use one of %s" % (self.precision, ", ".join(PRECISIONS)))
        self._check_dla()
        for key in ("gpu_fallback", "sparsity", "layer_profile"):
            if not isinstance(getattr(self, key), bool):
                raise EngineError("tensorrt %s must be true or false, got %r" % (key, getattr(self, key)))
        if self.workspace_mb is not None and not (_is_int(self.workspace_mb) and self.workspace_mb > 0):
            raise EngineError("tensorrt workspace_mb must be a positive integer (MiB), got %r" % (self.workspace_mb,))
        if self.use_trtexec not in TRTEXEC_MODES:
            raise EngineError("tensorrt use_trtexec %r: use one of %s" % (self.use_trtexec, ", ".join(TRTEXEC_MODES)))
        if not isinstance(self.cache_dir, str):
            raise EngineError("tensorrt cache_dir must be a folder path, got %r" % (self.cache_dir,))
        self._check_calibration_cache()

    def _check_dla(self) -> None:
        dla_core = self.dla_core
        if dla_core is not None and not (_is_int(dla_core) and dla_core >= 0):
            raise EngineError("tensorrt dla_core must be null or a DLA core number (0, 1), got %r" % (dla_core,))
        if dla_core is not None and self.precision == "fp32":
            raise EngineError("tensorrt dla_core needs precision fp16 or int8: the DLA does not run fp32")
        if self.gpu_fallback is True and dla_core is None:
            raise EngineError("tensorrt gpu_fallback only applies with dla_core: set dla_core or drop gpu_fallback")

    def _check_calibration_cache(self) -> None:
        calib = self.calibration_cache
        if calib is None:
            return
        if not isinstance(calib, str) or not calib:
            raise EngineError("tensorrt calibration_cache must be a file path, got %r" % (calib,))
        if self.precision != "int8":
            raise EngineError("tensorrt calibration_cache is only used with precision int8, not %s" % self.precision)


def validate_options(options: Dict[str, Any], model_dir: str = ".") -> Dict[str, Any]:
    """Check the plan's engine options and fill in defaults; raises EngineError naming the bad one.

    A relative `calibration_cache` is taken relative to the model's folder (the artifact)."""
    config = read_options(TensorRtOptions, options, "tensorrt")
    calib = config.calibration_cache
    if calib is not None:
        calib = os.path.join(model_dir, os.path.expanduser(calib))
        if not os.path.isfile(calib):
            raise EngineError(
                "tensorrt calibration_cache %s does not exist: push it with the artifact (edgekit quantize writes "
                "trt_calibration.cache) or drop the option" % calib
            )
    return {
        "precision": config.precision,
        "calibration_cache": calib,
        "dla_core": config.dla_core,
        "gpu_fallback": config.gpu_fallback,
        "sparsity": config.sparsity,
        "workspace_mb": config.workspace_mb,
        "profile_shapes": _check_profile_shapes(config.profile_shapes),
        "cache_dir": os.path.expanduser(config.cache_dir),
        "use_trtexec": config.use_trtexec,
        "layer_profile": config.layer_profile,
    }
