"""The measurement harness: owns the clock, warm-up, per-stage timing, throughput and dropped frames.

Engines only run inference; everything timed is timed here, with `time.perf_counter`, the same way for
every engine, so numbers from different targets are comparable. Two modes:

- sequential: capture -> preprocess -> inference -> postprocess, one frame at a time;
- pipelined: capture, preprocess and inference threads plus postprocess (in the calling thread), joined
  by bounded queues. Live sources drop the oldest queued frame when the capture queue is full (and count
  it); file sources block and never drop.

An error stops the run but keeps every frame measured before it (status `partial`). With a power
sampler, the idle baseline is read after warm-up and the sampler's thread runs around the timed part only
(it sleeps between reads; nothing is added inside the frame loop). Python 3.8-compatible.
"""

import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .preprocess import PreprocessSpec, preprocess

STAGES = ("capture", "preprocess", "inference", "postprocess")
SAMPLE_KEYS = STAGES + ("end_to_end",)
# the engine's own device time per timed frame (TensorRT: CUDA events around the execution), read from
# `engine.last_gpu_ms` after each inference; a series only when the engine reports it
GPU_KEY = "inference_gpu"
MODES = ("sequential", "pipelined")

_POLL_S = 0.05  # how often a waiting thread looks at the stop flags; never adds latency to a frame
_JOIN_S = 10.0  # how long shutdown waits for a thread stuck inside an engine or a camera driver
_END = object()  # end-of-stream sentinel passed down the queues

clock = time.perf_counter


_PACKAGE = __name__.rsplit(".", 1)[0]  # "edgekit.runtime" on the host, "runtime" in the zipapp


def _message(exc: BaseException) -> str:
    # our own errors already say what to do; anything else also needs its type to be recognisable
    if type(exc).__module__.startswith(_PACKAGE) and str(exc):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)


class Measurement(object):
    """What a run measured: per-stage samples (ms), frame counts, wall time, errors and warnings."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.samples: Dict[str, List[float]] = dict((key, []) for key in SAMPLE_KEYS)
        self.warmup = 0
        self.dropped = 0
        self.wall_s = 0.0
        self.errors: List[Dict[str, Any]] = []
        self.warnings: List[str] = []

    @property
    def timed(self) -> int:
        return len(self.samples["end_to_end"])

    @property
    def throughput_fps(self) -> Optional[float]:
        return self.timed / self.wall_s if self.timed and self.wall_s > 0 else None

    @property
    def status(self) -> str:
        if self.timed == 0:
            return "error"
        return "partial" if self.errors else "ok"

    def add_error(self, stage: str, frame: Optional[int], exc: Any) -> None:
        message = exc if isinstance(exc, str) else _message(exc)
        self.errors.append({"stage": stage, "frame": frame, "message": message})

    def record(self, t_capture: float, t_captured: float, t_pre: float, t_pre_end: float,
               t_inf: float, t_inf_end: float, t_post: float, t_post_end: float,
               gpu_ms: Optional[float] = None) -> None:  # fmt: skip
        samples = self.samples
        samples["capture"].append((t_captured - t_capture) * 1e3)
        samples["preprocess"].append((t_pre_end - t_pre) * 1e3)
        samples["inference"].append((t_inf_end - t_inf) * 1e3)
        samples["postprocess"].append((t_post_end - t_post) * 1e3)
        samples["end_to_end"].append((t_post_end - t_capture) * 1e3)
        if gpu_ms is not None:
            samples.setdefault(GPU_KEY, []).append(float(gpu_ms))


def make_preprocessor(spec: Optional[PreprocessSpec]) -> Callable[[np.ndarray], np.ndarray]:
    """Frame -> model input; without a spec the frame goes in as it is, with a batch axis of one."""
    if spec is None:
        return lambda frame: np.ascontiguousarray(frame[None])
    return lambda frame: preprocess(frame, spec)


class Harness(object):
    """Runs one measured pass of source -> preprocess -> engine -> postprocess."""

    def __init__(
        self,
        source: Any,
        engine: Any,
        preprocessor: Callable[[np.ndarray], np.ndarray],
        postprocessor: Any,
        mode: str = "sequential",
        frames: Optional[int] = None,
        duration_s: Optional[float] = None,
        warmup: int = 0,
        queue_size: int = 4,
        input_name: Optional[str] = None,
        power: Optional[Any] = None,
        power_idle_s: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError("mode %r: use sequential or pipelined" % mode)
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1, got %r" % queue_size)
        self.source = source
        self.engine = engine
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.mode = mode
        self.frames = frames
        self.duration_s = duration_s
        self.warmup = warmup
        self.queue_size = queue_size
        self.input_name = input_name if input_name is not None else engine.input_names[0]
        self.power = power  # a power.PowerSampler, or None
        self.power_idle_s = power_idle_s

    def run(self) -> Measurement:
        """Warm up (untimed), then time frames; never raises for errors inside the run."""
        measurement = Measurement(self.mode)
        try:
            ok = self._warm_up(measurement)
            if ok:
                if self.power is not None:
                    self.power.idle_baseline(self.power_idle_s)
                if self.mode == "sequential":
                    self._run_sequential(measurement)
                else:
                    self._run_pipelined(measurement)
        except KeyboardInterrupt:  # also what the agent turns SIGTERM into
            measurement.add_error("run", None, "interrupted; the frames measured so far are kept")
        if measurement.timed == 0 and not measurement.errors:
            measurement.add_error("capture", None, "the source delivered no frames to time")
        if (
            not measurement.errors
            and self.frames is not None
            and measurement.timed < self.frames
            and (self.duration_s is None or measurement.wall_s < self.duration_s)
        ):
            measurement.warnings.append(
                "the source ended after %d of the %d frames asked for; set source.loop to repeat it"
                % (measurement.timed, self.frames)
            )
        return measurement

    # -- warm-up -----------------------------------------------------------------------------------------

    def _warm_up(self, measurement: Measurement) -> bool:
        """Run `warmup` frames through every stage untimed; file sources then restart at frame 0, so
        every frame of the file is timed and scored. Returns False when warm-up failed."""
        source, live = self.source, bool(getattr(self.source, "live", False))
        done = 0
        done_this_pass = 0
        stage = "capture"
        try:
            while done < self.warmup:
                stage = "capture"
                try:
                    frame, label = next(source)
                except StopIteration:
                    if live or done_this_pass == 0:
                        break  # an empty source: the timed part reports it
                    source.rewind()
                    done_this_pass = 0
                    continue
                stage = "preprocess"
                feed = {self.input_name: self.preprocessor(frame)}
                stage = "inference"
                outputs = self.engine.infer(feed)
                stage = "postprocess"
                self.postprocessor.process(outputs, label, source.position, False)
                done += 1
                done_this_pass += 1
            if done and not live:
                stage = "capture"
                source.rewind()
        except Exception as exc:
            measurement.warmup = done
            measurement.add_error(stage, None, "warm-up frame %d: %s" % (done + 1, _message(exc)))
            return False
        measurement.warmup = done
        return True

    # -- power: the sampler's window is the timed part ---------------------------------------------------

    def _power_start(self) -> None:
        if self.power is not None:
            self.power.start()

    def _power_stop(self) -> None:
        if self.power is not None:
            self.power.stop()

    # -- sequential --------------------------------------------------------------------------------------

    def _run_sequential(self, m: Measurement) -> None:
        source, name = self.source, self.input_name
        engine = self.engine
        pre, infer, post = self.preprocessor, engine.infer, self.postprocessor.process
        frames = self.frames
        record = m.record
        index = 0
        stage = "capture"
        self._power_start()
        start = clock()
        end = start
        deadline = start + self.duration_s if self.duration_s is not None else None
        try:
            while frames is None or index < frames:
                stage = "capture"
                t0 = clock()
                if deadline is not None and t0 >= deadline:
                    break
                try:
                    frame, label = next(source)
                except StopIteration:
                    break
                t1 = clock()
                stage = "preprocess"
                feed = {name: pre(frame)}
                t2 = clock()
                stage = "inference"
                outputs = infer(feed)
                t3 = clock()
                gpu_ms = getattr(engine, "last_gpu_ms", None)
                stage = "postprocess"
                post(outputs, label, source.position, True)
                t4 = clock()
                record(t0, t1, t1, t2, t2, t3, t3, t4, gpu_ms)
                end = t4
                index += 1
        except Exception as exc:
            m.add_error(stage, index, exc)
        except KeyboardInterrupt:
            m.add_error("run", None, "interrupted; the frames measured so far are kept")
        finally:
            self._power_stop()
        m.wall_s = end - start

    # -- pipelined ---------------------------------------------------------------------------------------

    def _run_pipelined(self, m: Measurement) -> None:
        source, name = self.source, self.input_name
        engine = self.engine
        pre, infer, post = self.preprocessor, engine.infer, self.postprocessor.process
        live = bool(getattr(source, "live", False))
        frames = self.frames
        size = self.queue_size
        to_pre: Any = queue.Queue(size)
        to_inf: Any = queue.Queue(size)
        to_post: Any = queue.Queue(size)
        stop_capture = threading.Event()  # no new frames (error, deadline)
        finish = threading.Event()  # every stage leaves now (enough frames, or postprocess gone)
        done = dict((stage, threading.Event()) for stage in STAGES)
        dropped = [0]

        def put(q: Any, item: Any, consumer: str) -> bool:
            # blocks while the consumer lives; gives up when it is gone so no thread hangs on a full queue
            while True:
                try:
                    q.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    if done[consumer].is_set() or finish.is_set():
                        return False

        def put_newest(q: Any, item: Any) -> bool:
            # live sources: a camera does not wait, so the oldest queued frame makes room (and is counted)
            while True:
                try:
                    q.put_nowait(item)
                    return True
                except queue.Full:
                    if done["preprocess"].is_set() or finish.is_set():
                        return False
                    try:
                        q.get_nowait()
                        dropped[0] += 1
                    except queue.Empty:
                        pass

        def capture() -> None:
            index = 0
            deadline = start + self.duration_s if self.duration_s is not None else None
            try:
                while not stop_capture.is_set() and not finish.is_set():
                    if frames is not None and not live and index >= frames:
                        break
                    t0 = clock()
                    if deadline is not None and t0 >= deadline:
                        break
                    try:
                        frame, label = next(source)
                    except StopIteration:
                        break
                    except Exception as exc:
                        m.add_error("capture", index, exc)
                        break
                    # [index, payload, label, position, capture start/end, preprocess start/end, inference start/end,
                    #  engine GPU ms]
                    item = [index, frame, label, source.position, t0, clock(), 0.0, 0.0, 0.0, 0.0, None]
                    if not (put_newest(to_pre, item) if live else put(to_pre, item, "preprocess")):
                        break
                    index += 1
            finally:
                done["capture"].set()
                put(to_pre, _END, "preprocess")

        def worker(stage: str, q_in: Any, producer: str, q_out: Any, consumer: str, slot: int, work: Any) -> None:
            try:
                while not finish.is_set():
                    try:
                        item = q_in.get(timeout=_POLL_S)
                    except queue.Empty:
                        if done[producer].is_set() and q_in.empty():
                            break
                        continue
                    if item is _END:
                        break
                    try:
                        t0 = clock()
                        item[1] = work(item[1])
                        item[slot + 1] = clock()
                        item[slot] = t0
                        if stage == "inference":
                            item[10] = getattr(engine, "last_gpu_ms", None)
                    except Exception as exc:
                        m.add_error(stage, item[0], exc)
                        stop_capture.set()
                        break
                    if not put(q_out, item, consumer):
                        break
            finally:
                done[stage].set()
                put(q_out, _END, consumer)

        threads = [
            threading.Thread(target=capture, name="edgekit-capture"),
            threading.Thread(
                target=worker,
                name="edgekit-preprocess",
                args=("preprocess", to_pre, "capture", to_inf, "inference", 6, lambda f: {name: pre(f)}),
            ),
            threading.Thread(
                target=worker,
                name="edgekit-inference",
                args=("inference", to_inf, "preprocess", to_post, "postprocess", 8, infer),
            ),
        ]
        for thread in threads:
            thread.daemon = True  # a thread stuck in a driver must not keep the agent alive
        self._power_start()
        start = clock()
        end = start
        for thread in threads:
            thread.start()
        try:
            while not finish.is_set():
                try:
                    item = to_post.get(timeout=_POLL_S)
                except queue.Empty:
                    if done["inference"].is_set() and to_post.empty():
                        break
                    continue
                if item is _END:
                    break
                t0 = clock()
                try:
                    post(item[1], item[2], item[3], True)
                except Exception as exc:
                    m.add_error("postprocess", item[0], exc)
                    break
                end = clock()
                m.record(item[4], item[5], item[6], item[7], item[8], item[9], t0, end, item[10])
                if frames is not None and m.timed >= frames:
                    break
        except KeyboardInterrupt:
            m.add_error("run", None, "interrupted; the frames measured so far are kept")
        finally:
            stop_capture.set()
            done["postprocess"].set()
            finish.set()
            self._power_stop()  # before the joins: the power window is the timed part, not the shutdown
            limit = clock() + _JOIN_S
            for thread in threads:
                thread.join(max(0.0, limit - clock()))
                if thread.is_alive():
                    m.warnings.append("thread %s did not stop within %.0f s" % (thread.name, _JOIN_S))
        m.wall_s = end - start
        m.dropped = dropped[0]
        # errors from threads are appended in arrival order; report them by frame
        m.errors.sort(key=lambda e: (e["frame"] is None, e["frame"] if e["frame"] is not None else 0))
