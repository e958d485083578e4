"""The engine interface: a context manager with one checked public `infer`; backends override `_infer_impl`.

Engines run inference and nothing else: the harness owns the clock, warm-up and statistics, so the
numbers from different engines are comparable. Each engine declares its options as a dataclass
(`EngineOptions` subclass, a default and `metadata={"help": ...}` per field); the engine refuses an
unknown option by name, listing the ones it takes. Python 3.8-compatible.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Type, TypeVar

import numpy as np


class EngineError(RuntimeError):
    """An engine that cannot load its model or run a feed; the message names the file or input."""


class EngineUnavailable(EngineError):
    """An engine this agent does not have on this device (unknown, not installed, or not implemented)."""


@dataclass(frozen=True)
class EngineOptions(object):
    """The options every engine takes (the agent passes the plan's `engine.threads` to each engine).

    Engines subclass it with their own fields; `check` raises EngineError naming a bad value."""

    threads: Optional[int] = field(default=None, metadata={"help": "threads for inference; null: the engine's own"})

    def check(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)):
            raise EngineError("engine option threads must be an integer or null, got %r" % (self.threads,))


OptionsT = TypeVar("OptionsT", bound=EngineOptions)


def read_options(cls: Type[OptionsT], given: Optional[Dict[str, Any]], engine: str) -> OptionsT:
    """`given` (the plan's engine options over the artifact's defaults) as `cls`, checked: a null value means
    "not given" (the default); an unknown key is an EngineError naming it and the known ones with their help."""
    values = dict((key, value) for key, value in (given or {}).items() if value is not None)
    known = fields(cls)
    unknown = sorted(key for key in values if key not in set(spec.name for spec in known))
    if unknown:
        raise EngineError(
            "%s engine options %s are unknown; known: %s"
            % (engine, unknown, ", ".join("%s [%s]" % (spec.name, spec.metadata.get("help", "")) for spec in known))
        )
    options = cls(**values)
    options.check()
    return options


class TensorInfo(object):
    """Name, numpy dtype (None when the engine cannot say) and shape (ints, or str/None for dynamic axes)."""

    def __init__(self, name: str, dtype: Optional[np.dtype], shape: List[Any]) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "dtype": None if self.dtype is None else str(self.dtype), "shape": self.shape}

    def __repr__(self) -> str:
        return "TensorInfo(%r, %s, %r)" % (self.name, self.dtype, self.shape)


class Engine(object):
    """Base class. Subclasses load in `_load`, fill `self.inputs` / `self.outputs`, and run in `_infer_impl`.

    `Options` is the engine's options dataclass: the constructor reads `options` into `self.config` (unknown
    keys refused by name). An engine without one (None) checks `self.options` itself."""

    name = "base"
    Options: Optional[Type[EngineOptions]] = None

    def __init__(self, model_path: str, options: Optional[Dict[str, Any]] = None) -> None:
        self.model_path = model_path
        self.options = dict(options or {})
        self.config = read_options(self.Options, self.options, self.name) if self.Options is not None else None
        self.inputs: List[TensorInfo] = []
        self.outputs: List[TensorInfo] = []
        self._checked = False
        self._loaded = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def load(self) -> "Engine":
        """Load the model (idempotent); `open_engine` calls this so load errors surface at open time."""
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> "Engine":
        return self.load()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------------

    @property
    def input_names(self) -> List[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [t.name for t in self.outputs]

    def infer(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Run one feed and return the outputs in `output_names` order.

        The feed is checked on the first call (names, dtype, rank) and whenever `check_feed` is called;
        later calls go straight to the backend, because the harness feeds the same kind of tensor every
        frame and the check must not show up in the inference latency.
        """
        if not self._loaded:
            raise EngineError("%s engine for %s is closed: use it inside `with`" % (self.name, self.model_path))
        if not self._checked:
            self.check_feed(feed)
            self._checked = True
        return self._infer_impl(feed)

    def check_feed(self, feed: Dict[str, np.ndarray]) -> None:
        """Raise EngineError naming the input when the feed does not fit the model."""
        expected = self.input_names
        missing = [n for n in expected if n not in feed]
        extra = [n for n in feed if n not in expected]
        if missing or extra:
            raise EngineError(
                "feed does not match the model inputs %s: missing %s, unexpected %s" % (expected, missing, extra)
            )
        for info in self.inputs:
            value = feed[info.name]
            if not isinstance(value, np.ndarray):
                raise EngineError("input %r must be a numpy array, got %s" % (info.name, type(value).__name__))
            if info.dtype is not None and value.dtype != info.dtype:
                raise EngineError(
                    "input %r has dtype %s but the model wants %s: set preprocess dtype in the manifest"
                    % (info.name, value.dtype, info.dtype)
                )
            if info.shape is not None and value.ndim != len(info.shape):
                raise EngineError(
                    "input %r has rank %d (shape %s) but the model wants rank %d (shape %s): check preprocess layout"
                    % (info.name, value.ndim, value.shape, len(info.shape), info.shape)
                )
            for axis, want in enumerate(info.shape or []):
                if isinstance(want, int) and want > 0 and want != value.shape[axis]:
                    raise EngineError(
                        "input %r has shape %s but the model wants %s (axis %d): check preprocess resize/crop/layout"
                        % (info.name, value.shape, info.shape, axis)
                    )

    def facts(self) -> Dict[str, Any]:
        """What ran the model: engine name, library version, providers/delegates, threads."""
        return {"name": self.name, "version": None, "providers": [], "threads": None}

    # -- for subclasses --------------------------------------------------------------------------------

    def _load(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _infer_impl(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        raise NotImplementedError
