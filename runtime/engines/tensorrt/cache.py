"""The engine cache: a built plan is stored under a key of everything it depends on (the ONNX bytes, TensorRT
version, GPU and the build options), written atomically, and rebuilt once when it no longer deserializes.

Pure Python (no TensorRT, no CUDA): building and deserializing are passed in as functions.
Python 3.8-compatible.
"""

import hashlib
import json
import os
import re
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ...manifest import sha256_file
from ..base import EngineError


def build_options_for_key(opts: Dict[str, Any]) -> Dict[str, Any]:
    """The options that change the built plan (the calibration cache by content, not by path); where the
    cache lives, how it is built and whether layers are profiled at run time do not."""
    calib = opts.get("calibration_cache")
    return {
        "precision": opts["precision"],
        "calibration_cache_sha256": sha256_file(calib) if calib else None,
        "dla_core": opts["dla_core"],
        "gpu_fallback": opts["gpu_fallback"],
        "sparsity": opts["sparsity"],
        "workspace_mb": opts["workspace_mb"],
        "profile_shapes": opts["profile_shapes"],
    }


def engine_cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, build_options: Dict[str, Any]
) -> str:
    """sha256 over everything a plan depends on; canonical JSON so key order never matters."""
    blob = json.dumps(
        {
            "onnx_sha256": onnx_sha256,
            "tensorrt": trt_version,
            "gpu": gpu_name,
            "compute_capability": compute_capability,
            "build": build_options,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def engine_file_name(model_path: str, key: str, precision: str, dla_core: Optional[int], trt_version: str) -> str:
    """A name a person can read in `ls`: model, precision, DLA core, TensorRT version, then the key."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(model_path))[0]) or "model"
    parts = [stem, precision] + (["dla%d" % dla_core] if dla_core is not None else []) + ["trt" + trt_version]
    return "%s.%s.engine" % (".".join(parts), key[:16])


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename it, so a reader (another agent, a
    killed build) never sees half a plan."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_build(
    engine_path: str, build: Callable[[], bytes], deserialize: Callable[[bytes], Any]
) -> Tuple[Any, Dict[str, Any]]:
    """The cached plan when it deserializes; else build, cache atomically and deserialize.

    A cached plan that deserializes to None (or raises) is deleted and rebuilt once; `info` says so.
    Returns (engine, info) with info keys from_cache, rebuilt_bad_cache, build_s, warnings."""
    info: Dict[str, Any] = {"from_cache": False, "rebuilt_bad_cache": False, "build_s": None, "warnings": []}
    if os.path.isfile(engine_path):
        with open(engine_path, "rb") as handle:
            engine = _try_deserialize(deserialize, handle.read())
        if engine is not None:
            info["from_cache"] = True
            return engine, info
        info["rebuilt_bad_cache"] = True
        info["warnings"].append(
            "cached TensorRT engine %s could not be deserialized (corrupt, or built by another TensorRT or GPU): "
            "deleted and rebuilt" % engine_path
        )
        os.unlink(engine_path)
    start = time.perf_counter()
    data = build()
    info["build_s"] = round(time.perf_counter() - start, 3)
    write_atomic(engine_path, data)
    engine = _try_deserialize(deserialize, data)
    if engine is None:
        raise EngineError(
            "TensorRT built %s but cannot deserialize it: the TensorRT install is inconsistent (trtexec and the "
            "Python bindings from different versions?); reinstall JetPack's TensorRT" % engine_path
        )
    return engine, info


def _try_deserialize(deserialize: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return deserialize(data)
    except Exception:  # TensorRT 8 returns None, some builds raise: both mean "not usable here"
        return None
