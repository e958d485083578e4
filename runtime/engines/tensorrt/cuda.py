"""The two CUDA Python bindings the engine can use, behind one small interface: cuda-python's runtime API
first, pycuda's driver API second. The library is imported only when `open_cuda` is called (the hardware
side of the engine). Python 3.8-compatible.
"""

import ctypes
import importlib
from typing import Any, Callable, Tuple

import numpy as np

from ..base import EngineError, EngineUnavailable

CUDA_CHOICES = (
    ("cuda-python", ("cuda.bindings.runtime", "cuda.cudart")),  # cuda-python >= 12.6 moved cudart
    ("pycuda", ("pycuda.driver",)),
)


def choose_cuda(importer: Callable[[str], Any] = importlib.import_module) -> Tuple[str, Any]:
    """(name, module): cuda-python's runtime first, pycuda's driver second; EngineUnavailable names both."""
    failures = []
    for name, modules in CUDA_CHOICES:
        reasons = []
        for module in modules:
            try:
                return name, importer(module)
            except ImportError as exc:
                reasons.append("%s: %s" % (module, exc))
        failures.append("%s (%s)" % (name, "; ".join(reasons)))
    raise EngineUnavailable(
        "engine 'tensorrt' needs a CUDA Python library and neither imports: %s. Install one on the device: "
        "`pip install cuda-python` (the version matching JetPack's CUDA) or `pip install pycuda`"
        % " and ".join(failures)
    )


class _CudaPython(object):
    """cuda-python's runtime API: every call returns (error, values...)."""

    name = "cuda-python"

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def _ok(self, result: Any, what: str) -> Any:
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise EngineError("CUDA %s failed: %s" % (what, err))
        return result[1] if len(result) == 2 else result[1:]

    def enter(self) -> None:  # the runtime API makes device 0's primary context current in any thread
        pass

    def exit(self) -> None:
        pass

    def device(self) -> Tuple[str, str]:
        props = self._ok(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name.decode("utf-8", "replace") if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00 "), "%d.%d" % (props.major, props.minor)

    def alloc(self, nbytes: int) -> Tuple[Any, int]:
        ptr = self._ok(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        return ptr, int(ptr)

    def free(self, handle: Any) -> None:
        self.rt.cudaFree(handle)

    def host_empty(self, count: int, dtype: np.dtype) -> Tuple[Any, np.ndarray]:
        # pinned memory, viewed as numpy, as TensorRT's own samples do
        ptr = self._ok(self.rt.cudaMallocHost(max(count, 1) * dtype.itemsize), "cudaMallocHost")
        pointer = ctypes.cast(int(ptr), ctypes.POINTER(ctypes.c_uint8))
        raw = np.ctypeslib.as_array(pointer, (max(count, 1) * dtype.itemsize,))
        return ptr, raw.view(dtype)[:count]

    def host_free(self, handle: Any) -> None:
        self.rt.cudaFreeHost(handle)

    def stream(self) -> Any:
        return self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        self.rt.cudaStreamDestroy(stream)

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync")

    def sync(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event(self) -> Any:
        return self._ok(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def destroy_event(self, event: Any) -> None:
        self.rt.cudaEventDestroy(event)


class _PyCuda(object):
    """pycuda's driver API on device 0's primary context (the one TensorRT's runtime calls use), pushed
    around every call because the pipelined harness runs inference in its own thread."""

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self.cuda = driver
        driver.init()
        self.context = driver.Device(0).retain_primary_context()

    def enter(self) -> None:
        self.context.push()

    def exit(self) -> None:
        self.cuda.Context.pop()

    def device(self) -> Tuple[str, str]:
        dev = self.cuda.Device(0)
        return dev.name(), "%d.%d" % dev.compute_capability()

    def alloc(self, nbytes: int) -> Tuple[Any, int]:
        mem = self.cuda.mem_alloc(max(nbytes, 1))
        return mem, int(mem)

    def free(self, handle: Any) -> None:
        handle.free()

    def host_empty(self, count: int, dtype: np.dtype) -> Tuple[Any, np.ndarray]:
        array = self.cuda.pagelocked_empty(max(count, 1), dtype)
        return array, array[:count]

    def host_free(self, handle: Any) -> None:
        base = getattr(handle, "base", None)  # pagelocked_empty's HostAllocation
        if base is not None and hasattr(base, "free"):
            base.free()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        pass  # freed with the object

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.time_till(end))

    def destroy_event(self, event: Any) -> None:
        pass


def open_cuda(importer: Callable[[str], Any] = importlib.import_module) -> Any:
    name, module = choose_cuda(importer)
    return _CudaPython(module) if name == "cuda-python" else _PyCuda(module)
