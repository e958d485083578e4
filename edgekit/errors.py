"""The exceptions edgekit raises on the host; each message names the bad input and what to do."""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a problem the user can fix, explained in the message."""


class ModelError(EdgekitError):
    """A model file or module that cannot be loaded, checked or converted."""


class ArtifactError(EdgekitError):
    """A missing, corrupt or tampered artifact folder."""


class RunError(EdgekitError):
    """A run that could not be started or whose result cannot be trusted."""


class DeviceError(RunError):
    """A device that cannot be reached or used; the message names the device and what to do."""


class HostKeyError(DeviceError):
    """A host key that is unknown (and not trusted on first use) or that changed."""


class DeviceTimeout(DeviceError):
    """A command on the device that did not finish in time."""
