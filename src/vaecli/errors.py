"""The library's own exceptions. The CLI turns every :class:`VaeError` into one line and exit 2."""

from __future__ import annotations


class VaeError(Exception):
    """Base class of every error vaecli raises on purpose (bad input, missing files...)."""

    mirrored = False  # DDP: raised on a rank only because rank 0 raised it (the CLI prints it once)


class ConfigError(VaeError):
    """A configuration value or command-line option is invalid."""


class DataError(VaeError):
    """A dataset or image cannot be found or decoded."""


class RunNotFoundError(VaeError):
    """No run of that name or path exists."""


class CheckpointError(VaeError):
    """A checkpoint is missing, of another format, or does not match its config."""


class DeviceError(VaeError):
    """The requested device is not available."""


class TrainingError(VaeError):
    """Training cannot continue (for example a non-finite loss)."""


class DistributedError(VaeError):
    """Distributed training (torchrun) cannot start or lost a rank."""
