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
from typing import Any, Callable, Dict, List, Optional, Tuple

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
        self.first_inference_ms: Optional[float] = None  # the warm-up's first engine call, when there is a warm-up
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

    def record(
        self,
        t_capture: float,
        t_captured: float,
        t_pre: float,
        t_pre_end: float,
        t_inf: float,
        t_inf_end: float,
        t_post: float,
        t_post_end: float,
        gpu_ms: Optional[float] = None,
    ) -> None:
        samples = self.samples
        samples["capture"].append((t_captured - t_capture) * 1e3)
        samples["preprocess"].append((t_pre_end - t_pre) * 1e3)
        samples["inference"].append((t_inf_end - t_inf) * 1e3)
        samples["postprocess"].append((t_post_end - t_post) * 1e3)
        samples["end_to_end"].append((t_post_end - t_capture) * 1e3)
        if gpu_ms is not None:
            samples.setdefault(GPU_KEY, []).append(float(gpu_ms))


def frame_size(frame: Any) -> Optional[Tuple[int, int]]:
    """(height, width) of a captured frame, which the postprocessor maps its boxes and masks back onto."""
    shape = getattr(frame, "shape", ())
    return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None


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
        self._measurement: Optional[Measurement] = None
        self._phase = "warmup"
        self._phase_started = clock()

    def progress(self) -> Tuple[str, int, Optional[int], float]:
        """(phase, frames done in it, frames asked for, its seconds so far): read from another thread by the
        progress reporter."""
        m = self._measurement
        elapsed = clock() - self._phase_started
        if m is None or self._phase == "warmup":
            return ("warmup", m.warmup if m is not None else 0, self.warmup, elapsed)
        return ("run", m.timed, self.frames, elapsed)

    def run(self) -> Measurement:
        """Warm up (untimed), then time frames; never raises for errors inside the run."""
        measurement = Measurement(self.mode)
        self._phase_started = clock()
        self._measurement = measurement
        try:
            ok = self._warm_up(measurement)
            self._phase_started, self._phase = clock(), "run"
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
                started = clock()
                outputs = self.engine.infer(feed)
                if measurement.first_inference_ms is None:
                    measurement.first_inference_ms = (clock() - started) * 1e3
                stage = "postprocess"
                self.postprocessor.process(outputs, label, source.position, False, frame_size=frame_size(frame))
                done += 1
                done_this_pass += 1
                measurement.warmup = done  # read by progress()
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
                post(outputs, label, source.position, True, frame_size=frame_size(frame))
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
        pipe = _Pipeline(self, m)
        threads = pipe.threads()
        self._power_start()
        pipe.start = pipe.end = clock()
        for thread in threads:
            thread.start()
        try:
            pipe.postprocess()
        except KeyboardInterrupt:
            m.add_error("run", None, "interrupted; the frames measured so far are kept")
        finally:
            pipe.stop_all()
            self._power_stop()  # before the joins: the power window is the timed part, not the shutdown
            pipe.join(threads)
        m.wall_s = pipe.end - pipe.start
        m.dropped = pipe.dropped
        # errors from threads are appended in arrival order; report them by frame
        m.errors.sort(key=lambda e: (e["frame"] is None, e["frame"] if e["frame"] is not None else 0))


# A frame travelling down the pipeline is a list, filled in stage by stage: [index, payload, label, position,
# capture start/end, preprocess start/end, inference start/end, engine GPU ms, frame (height, width)]; the
# payload is the frame, then the model input, then the outputs, so the frame's size travels beside it
_PRE_START, _INF_START, _GPU_MS, _FRAME_SIZE = 6, 8, 10, 11


class _Pipeline(object):
    """One pipelined run: capture, preprocess and inference threads and postprocess (in the calling thread),
    joined by three bounded queues, with the flags that stop them."""

    def __init__(self, harness: Harness, m: Measurement) -> None:
        self.harness = harness
        self.m = m
        self.live = bool(getattr(harness.source, "live", False))
        size = harness.queue_size
        self.to_pre: Any = queue.Queue(size)
        self.to_inf: Any = queue.Queue(size)
        self.to_post: Any = queue.Queue(size)
        self.stop_capture = threading.Event()  # no new frames (error, deadline)
        self.finish = threading.Event()  # every stage leaves now (enough frames, or postprocess gone)
        self.done = dict((stage, threading.Event()) for stage in STAGES)
        self.dropped = 0  # live frames the capture queue pushed out (only the capture thread counts)
        self.start = 0.0  # the clock when the timed part began
        self.end = 0.0  # the clock when the last frame left postprocess

    # -- queue plumbing ----------------------------------------------------------------------------------

    def _gone(self, consumer: str) -> bool:
        return self.done[consumer].is_set() or self.finish.is_set()

    def put(self, q: Any, item: Any, consumer: str) -> bool:
        """Block while the consumer lives; give up when it is gone, so no thread hangs on a full queue."""
        while True:
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if self._gone(consumer):
                    return False

    def put_newest(self, q: Any, item: Any) -> bool:
        """Live sources: a camera does not wait, so the oldest queued frame makes room (and is counted)."""
        while True:
            try:
                q.put_nowait(item)
                return True
            except queue.Full:
                if self._gone("preprocess"):
                    return False
                try:
                    q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, q: Any, producer: str) -> Any:
        """The next item, or _END once the producer is done and its queue empty, or the run finishes."""
        while not self.finish.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if self.done[producer].is_set() and q.empty():
                    return _END
        return _END

    # -- stage workers -----------------------------------------------------------------------------------

    def threads(self) -> List[threading.Thread]:
        h = self.harness
        name, pre, infer = h.input_name, h.preprocessor, h.engine.infer

        def preprocess_stage(frame: np.ndarray) -> Dict[str, np.ndarray]:
            return {name: pre(frame)}

        threads = [
            threading.Thread(target=self.capture, name="edgekit-capture"),
            threading.Thread(
                target=self.worker,
                name="edgekit-preprocess",
                args=("preprocess", self.to_pre, "capture", self.to_inf, "inference", _PRE_START, preprocess_stage),
            ),
            threading.Thread(
                target=self.worker,
                name="edgekit-inference",
                args=("inference", self.to_inf, "preprocess", self.to_post, "postprocess", _INF_START, infer),
            ),
        ]
        for thread in threads:
            thread.daemon = True  # a thread stuck in a driver must not keep the agent alive
        return threads

    def _more_frames(self, index: int) -> bool:
        if self.stop_capture.is_set() or self.finish.is_set():
            return False
        frames = self.harness.frames
        return frames is None or self.live or index < frames  # a live source keeps going: drops do not count

    def _hand_on(self, item: Any) -> bool:
        return self.put_newest(self.to_pre, item) if self.live else self.put(self.to_pre, item, "preprocess")

    def capture(self) -> None:
        source, m = self.harness.source, self.m
        duration_s = self.harness.duration_s
        deadline = self.start + duration_s if duration_s is not None else None
        index = 0
        try:
            while self._more_frames(index):
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
                t1 = clock()
                item = [index, frame, label, source.position, t0, t1, 0.0, 0.0, 0.0, 0.0, None, frame_size(frame)]
                if not self._hand_on(item):
                    break
                index += 1
        finally:
            self.done["capture"].set()
            self.put(self.to_pre, _END, "preprocess")

    def _work_on(self, stage: str, item: Any, slot: int, work: Any) -> bool:
        """Run one stage on one frame and time it; False (after recording the error) when it failed."""
        try:
            t0 = clock()
            item[1] = work(item[1])
            item[slot + 1] = clock()
            item[slot] = t0
            if stage == "inference":
                item[_GPU_MS] = getattr(self.harness.engine, "last_gpu_ms", None)
        except Exception as exc:
            self.m.add_error(stage, item[0], exc)
            self.stop_capture.set()
            return False
        return True

    def worker(self, stage: str, q_in: Any, producer: str, q_out: Any, consumer: str, slot: int, work: Any) -> None:
        try:
            while True:
                item = self.get(q_in, producer)
                if item is _END or not self._work_on(stage, item, slot, work):
                    break
                if not self.put(q_out, item, consumer):
                    break
        finally:
            self.done[stage].set()
            self.put(q_out, _END, consumer)

    def postprocess(self) -> None:
        """The last stage, in the calling thread: records each frame's timings until the run is done."""
        m, frames, post = self.m, self.harness.frames, self.harness.postprocessor.process
        while True:
            item = self.get(self.to_post, "inference")
            if item is _END:
                break
            t0 = clock()
            try:
                post(item[1], item[2], item[3], True, frame_size=item[_FRAME_SIZE])
            except Exception as exc:
                m.add_error("postprocess", item[0], exc)
                break
            self.end = clock()
            m.record(item[4], item[5], item[6], item[7], item[8], item[9], t0, self.end, item[_GPU_MS])
            if frames is not None and m.timed >= frames:
                break

    # -- shutdown ----------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        self.stop_capture.set()
        self.done["postprocess"].set()
        self.finish.set()

    def join(self, threads: List[threading.Thread]) -> None:
        """Wait for the threads, _JOIN_S in all; one stuck inside an engine or a driver is named, not waited on."""
        limit = clock() + _JOIN_S
        for thread in threads:
            thread.join(max(0.0, limit - clock()))
            if thread.is_alive():
                self.m.warnings.append("thread %s did not stop within %.0f s" % (thread.name, _JOIN_S))
