"""The TensorRT engine: builds a TensorRT engine from the artifact's ONNX on the device, caches it, runs it.

An engine plan only runs on the TensorRT version and GPU that built it, so the artifact carries ONNX and
the device builds (with the Python builder, or the `trtexec` binary) once; the plan is cached under a
key of the ONNX bytes, TensorRT version, GPU and build options. A cached plan that no longer
deserializes (corrupt, or another TensorRT) is rebuilt once, and the facts say so.

Written against TensorRT's documented Python API: TensorRT 8.5 (JetPack 5) to 10.x (JetPack 6).
Python 3.8-compatible. The modules split at the hardware line:

- `options`, `cache`, `trtexec`: pure Python, importable and tested anywhere (they never import TensorRT or
  a CUDA library);
- `cuda` (cuda-python or pycuda), `builder` (the Python builder), `engine` (`TensorRtEngine`, registered as
  "tensorrt"): need TensorRT and an NVIDIA GPU, and import those libraries only when the engine loads.
"""

from .builder import build_plan, build_with_python
from .cache import build_options_for_key, engine_cache_key, engine_file_name, load_or_build, write_atomic
from .cuda import CUDA_CHOICES, choose_cuda, open_cuda
from .engine import TensorRtEngine
from .options import DEFAULT_CACHE_DIR, PRECISIONS, TRTEXEC_MODES, validate_options
from .trtexec import (
    TRTEXEC_FLAGS,
    TRTEXEC_PATHS,
    TRTEXEC_TIMEOUT_S,
    build_with_trtexec,
    find_trtexec,
    parse_trtexec_output,
    trtexec_benchmark_command,
    trtexec_command,
    trtexec_flags,
)

__all__ = [
    "CUDA_CHOICES",
    "DEFAULT_CACHE_DIR",
    "PRECISIONS",
    "TRTEXEC_FLAGS",
    "TRTEXEC_MODES",
    "TRTEXEC_PATHS",
    "TRTEXEC_TIMEOUT_S",
    "TensorRtEngine",
    "build_options_for_key",
    "build_plan",
    "build_with_python",
    "build_with_trtexec",
    "choose_cuda",
    "engine_cache_key",
    "engine_file_name",
    "find_trtexec",
    "load_or_build",
    "open_cuda",
    "parse_trtexec_output",
    "trtexec_benchmark_command",
    "trtexec_command",
    "trtexec_flags",
    "validate_options",
    "write_atomic",
]
