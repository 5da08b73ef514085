"""Error hierarchy of nre_ros. Failing to localize is a result, never one of these."""
from __future__ import annotations


class NreError(Exception):
    """Base class of every error nre_ros raises on purpose."""


class ConfigError(NreError, ValueError):
    """A configuration value or file is invalid."""


class MapFormatError(NreError, ValueError):
    """A map file is missing, corrupt, of another version or built with another model."""


class ShapeError(NreError, ValueError):
    """An array has the wrong shape or dtype."""


class InputError(NreError, ValueError):
    """Bad input data (image, intrinsics, pose): rejected, nothing changes."""


class BackendUnavailable(NreError, RuntimeError):
    """An optional inference backend (CUDA, ONNX Runtime, TensorRT) cannot run here."""
