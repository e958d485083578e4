"""Time one model file with an engine on this device: the clock of the host's latency plan when the device is
not the host (`agent --time-model PATH --engine NAME [--runs N] [--threads N] [--inputs NPZ]`).

The inputs are the host's calibration sample (an .npz keyed by input name) when given, else seeded random values
of each input's shape (dynamic axes as 1). Three untimed runs, then `runs` timed ones; the median goes back as one
JSON object on stdout. Python 3.8-compatible.
"""

import time
from typing import Any, Callable, Dict, Optional

import numpy as np

from .engines import EngineError, open_engine


def time_model(
    model_path: str, engine_name: str, runs: int = 15, threads: Optional[int] = 1, inputs_path: Optional[str] = None
) -> Dict[str, Any]:
    if runs < 1:
        raise EngineError("runs must be at least 1, got %d" % runs)
    with open_engine(engine_name, model_path, {"threads": threads}) as engine:
        feed = _feed(engine, inputs_path)
        median = median_call_ms(lambda: engine.infer(feed), runs)
    return {"median_ms": median, "runs": runs, "engine": engine_name, "threads": threads}


def median_call_ms(call: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    """`warmup` untimed calls, then the median wall time of `runs` calls, in milliseconds."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(samples))


def _feed(engine: Any, inputs_path: Optional[str]) -> Dict[str, np.ndarray]:
    if inputs_path:
        with np.load(inputs_path, allow_pickle=False) as data:
            given = dict((name, data[name]) for name in data.files)
        missing = [name for name in engine.input_names if name not in given]
        if missing:
            raise EngineError("the inputs file %s has no %s" % (inputs_path, ", ".join(missing)))
        return dict((name, given[name]) for name in engine.input_names)
    rng = np.random.default_rng(0)
    feed = {}
    for info in engine.inputs:
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in info.shape]
        feed[info.name] = rng.standard_normal(shape).astype(info.dtype or np.float32)
    return feed
