"""The `trtexec` binary: finding it, the command lines that build or time a plan, and its performance summary
read back as numbers.

Pure Python (no TensorRT, no CUDA): trtexec runs as a subprocess. Python 3.8-compatible.
"""

import os
import re
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from ..base import EngineError

# JetPack installs trtexec here, outside PATH
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
TRTEXEC_TIMEOUT_S = 3600  # big models on a Nano take tens of minutes to build


def find_trtexec(candidates: Sequence[str] = TRTEXEC_PATHS) -> Optional[str]:
    found = shutil.which("trtexec")
    if found:
        return found
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _shape_arg(shapes: Dict[str, List[List[int]]], which: int) -> str:
    # trtexec takes 'name':dims; names with ':' or ',' must be wrapped in single quotes (its --help says so)
    items = []
    for name, triple in sorted(shapes.items()):
        shown = "'%s'" % name if re.search(r"[:,]", name) else name
        items.append("%s:%s" % (shown, "x".join(str(d) for d in triple[which])))
    return ",".join(items)


# The trtexec options this module passes, per TensorRT release: the names samples/common/sampleOptions.cpp parses
# on NVIDIA/TensorRT's release/8.5, release/8.6 and release/10.3 branches. Only "build, don't time" moved:
# 8.5 has --buildOnly alone, 8.6 added --skipInference and deprecated --buildOnly, 10 removed --buildOnly (with
# --workspace and --explicitBatch, which this module never passes). `--memPoolSize=workspace:N` without a unit
# is MiB in all three.
_COMMON_FLAGS = {
    "onnx": "--onnx",
    "save_engine": "--saveEngine",
    "load_engine": "--loadEngine",
    "fp16": "--fp16",
    "int8": "--int8",
    "calib": "--calib",
    "dla_core": "--useDLACore",
    "gpu_fallback": "--allowGPUFallback",
    "sparsity": "--sparsity",
    "mem_pool": "--memPoolSize",
    "min_shapes": "--minShapes",
    "opt_shapes": "--optShapes",
    "max_shapes": "--maxShapes",
}
TRTEXEC_FLAGS = {
    (8, 5): dict(_COMMON_FLAGS, build_only="--buildOnly"),
    (8, 6): dict(_COMMON_FLAGS, build_only="--skipInference"),
    (10, 0): dict(_COMMON_FLAGS, build_only="--skipInference"),
}


def trtexec_flags(trt_version: str) -> Dict[str, str]:
    """The flag table of the newest release at or below `trt_version` ("8.5.2.2", "10.3.0.30")."""
    try:
        parts = [int(p) for p in str(trt_version).split(".")[:2]]
        key = (parts[0], parts[1] if len(parts) > 1 else 0)
    except ValueError:
        raise EngineError("cannot read TensorRT version %r to choose trtexec's options" % (trt_version,)) from None
    known = [release for release in sorted(TRTEXEC_FLAGS) if release <= key]
    if not known:
        raise EngineError(
            "trtexec of TensorRT %s is older than 8.5, the oldest this engine builds with: set use_trtexec to auto"
            % trt_version
        )
    return TRTEXEC_FLAGS[known[-1]]


def trtexec_command(
    trtexec: str, onnx_path: str, engine_path: str, opts: Dict[str, Any], trt_version: str
) -> List[str]:
    """The trtexec argv that builds what the Python builder would, in the option names of TensorRT `trt_version`.

    int8 also allows fp16 for layers INT8 does not cover, like the Python builder."""
    flags = trtexec_flags(trt_version)
    cmd = [trtexec, "%s=%s" % (flags["onnx"], onnx_path), "%s=%s" % (flags["save_engine"], engine_path)]
    cmd.append(flags["build_only"])
    if opts["precision"] in ("fp16", "int8"):
        cmd.append(flags["fp16"])
    if opts["precision"] == "int8":
        cmd.append(flags["int8"])
        if opts.get("calibration_cache"):
            cmd.append("%s=%s" % (flags["calib"], opts["calibration_cache"]))
    if opts.get("dla_core") is not None:
        cmd.append("%s=%d" % (flags["dla_core"], opts["dla_core"]))
        if opts.get("gpu_fallback"):
            cmd.append(flags["gpu_fallback"])
    if opts.get("sparsity"):
        cmd.append("%s=enable" % flags["sparsity"])
    if opts.get("workspace_mb"):
        cmd.append("%s=workspace:%d" % (flags["mem_pool"], opts["workspace_mb"]))
    shapes = opts.get("profile_shapes")
    if shapes:
        for role, which in (("min_shapes", 0), ("opt_shapes", 1), ("max_shapes", 2)):
            cmd.append("%s=%s" % (flags[role], _shape_arg(shapes, which)))
    return cmd


def trtexec_benchmark_command(
    trtexec: str, engine_path: str, dla_core: Optional[int] = None, trt_version: Optional[str] = None
) -> List[str]:
    """trtexec timing a cached plan: a second opinion on the agent's numbers (GPU compute only). The options it
    takes are the same in every release, so `trt_version` only checks the release is one this module knows."""
    flags = trtexec_flags(trt_version) if trt_version else _COMMON_FLAGS
    cmd = [trtexec, "%s=%s" % (flags["load_engine"], engine_path)]
    if dla_core is not None:
        cmd.append("%s=%d" % (flags["dla_core"], dla_core))
    return cmd


# Written against trtexec's documented "Performance summary" lines (TensorRT 8.x and 10.x), e.g.
#   [08/11/2022-06:55:33] [I] Throughput: 233.689 qps
#   [08/11/2022-06:55:33] [I] GPU Compute Time: min = 4.23773 ms, max = 5.25439 ms, mean = 4.26986 ms,
#       median = 4.25195 ms, percentile(90%) = 4.3 ms, percentile(95%) = 4.4 ms, percentile(99%) = 5.24138 ms
# (one line each; older versions print only percentile(99%)); numbers may be in e-notation.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SUMMARY_KEYS = {
    "Latency": "latency_ms",
    "End-to-End Host Latency": "host_latency_ms",
    "Enqueue Time": "enqueue_ms",
    "H2D Latency": "h2d_ms",
    "GPU Compute Time": "gpu_compute_ms",
    "D2H Latency": "d2h_ms",
}
_SUMMARY_RE = re.compile(r"^(?:\[[^\]]*\]\s*)*(%s):\s*(.*)$" % "|".join(re.escape(k) for k in _SUMMARY_KEYS))
_STAT_RE = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*(" + _NUMBER + r")\s*ms")
_THROUGHPUT_RE = re.compile(r"^(?:\[[^\]]*\]\s*)*Throughput:\s*(" + _NUMBER + r")\s*qps")


def parse_trtexec_output(text: str) -> Dict[str, Any]:
    """trtexec's performance summary as numbers: throughput_qps and, per timed quantity, min/max/mean/median
    and pNN in ms. Keys that trtexec did not print are absent; `passed` is trtexec's own verdict."""
    result: Dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip()
        match = _THROUGHPUT_RE.match(line)
        if match:
            result["throughput_qps"] = float(match.group(1))
            continue
        match = _SUMMARY_RE.match(line)
        if not match:
            continue
        stats: Dict[str, float] = {}
        for stat, pct, value in _STAT_RE.findall(match.group(2)):
            key = "p%g" % float(pct) if pct else stat  # percentile(99.9%) -> p99.9
            stats[key] = float(value)
        if stats:
            result[_SUMMARY_KEYS[match.group(1)]] = stats
    if "&&&& PASSED TensorRT.trtexec" in text:
        result["passed"] = True
    elif "&&&& FAILED TensorRT.trtexec" in text:
        result["passed"] = False
    return result


def build_with_trtexec(
    trtexec: str, onnx_path: str, opts: Dict[str, Any], trt_version: str, timeout_s: float = TRTEXEC_TIMEOUT_S
) -> bytes:
    """Run trtexec (of TensorRT `trt_version`) into a temporary file and return the plan's bytes (the caller
    caches them atomically)."""
    fd, tmp = tempfile.mkstemp(prefix="edgekit-trtexec.", suffix=".engine")
    os.close(fd)
    try:
        cmd = trtexec_command(trtexec, onnx_path, tmp, opts, trt_version)
        try:
            run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EngineError("trtexec did not finish building %s within %d s" % (onnx_path, timeout_s)) from None
        except OSError as exc:
            raise EngineError("cannot run %s: %s" % (trtexec, exc)) from exc
        log = run.stdout.decode("utf-8", "replace")
        if run.returncode != 0 or os.path.getsize(tmp) == 0:
            tail = "\n".join(log.strip().splitlines()[-15:])
            raise EngineError(
                "trtexec could not build %s (exit %d); command: %s\n%s"
                % (onnx_path, run.returncode, " ".join(cmd), tail)
            )
        with open(tmp, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(tmp)
