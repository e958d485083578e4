"""The exceptions edgekit raises on the host; each message names the bad input and what to do.

Every error a user can cause is an `EdgekitError`, which the CLI shows as one `error:` line (exit code 2).
Errors that replaced a built-in exception keep it as a second base, so `except ValueError` still works.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a problem the user can fix, explained in the message."""


class ModelError(EdgekitError):
    """A model file or module that cannot be loaded, checked or converted."""


class ArtifactError(EdgekitError):
    """A missing, corrupt or tampered artifact folder."""


class RunError(EdgekitError):
    """A run that could not be started or whose result cannot be trusted."""


class EvaluationError(EdgekitError):
    """Annotations or a reference that cannot score a run's detections: the message names the entry."""


# -- calibration ----------------------------------------------------------------------------------------


class CalibrationError(EdgekitError, ValueError):
    """Calibration that cannot produce trustworthy ranges: an unknown observer, scheme or setting, or a
    tensor that never saw a finite value."""


class CalibrationDataError(EdgekitError):
    """Calibration data that is missing, empty or unusable."""


class QuantSpecError(EdgekitError):
    """A QuantSpec that is unreadable, inconsistent, or made for another model."""


# -- compression (torch) --------------------------------------------------------------------------------


class CompressError(EdgekitError, ValueError):
    """Pruning, distillation, QAT or training given a setting or model it cannot work with."""


class CompressStateError(EdgekitError, RuntimeError):
    """A compression helper used out of order (a removed pruner, a loss asked for before the forward pass)."""


class NonFiniteLossError(RunError):
    """The loss was NaN or inf: training stopped; the trainer keeps its last good state."""


class DeviceError(RunError):
    """A device that cannot be reached or used; the message names the device and what to do."""


class HostKeyError(DeviceError):
    """A host key that is unknown (and not trusted on first use) or that changed."""


class DeviceTimeout(DeviceError):
    """A command on the device that did not finish in time."""


class RunInterrupted(RunError):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SIGHUP): every agent was stopped and what each device
    measured is stored (`partial`; devices that had not started: `cancelled`). `records` holds one
    `FleetRecord` per device (stored); `result` is the one transport's result where a transport raised it;
    `signum` is the signal, so the CLI exits 128 + signum like a killed process."""

    def __init__(
        self, message: str, *, signum: int = 2, records: list | None = None, result: dict | None = None
    ) -> None:
        super().__init__(message)
        self.signum = signum
        self.records = list(records or [])
        self.result = result
