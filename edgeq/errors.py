"""User-facing errors.

Every failure a user can cause (bad recipe, missing model, tampered bundle, unreadable audio,
missing library) raises an `EdgeqError` whose message is one line that says what is wrong and
what to do. The CLI prints that line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base class: a one-line, user-facing message."""

    exit_code = 1


class RecipeError(EdgeqError):
    """A recipe name, file, key or value is invalid."""


class TargetError(EdgeqError):
    """A target name or file is invalid."""


class ModelSourceError(EdgeqError):
    """The source Whisper checkpoint cannot be found, fetched or loaded."""


class BundleError(EdgeqError):
    """A bundle is missing, incomplete, of an unknown format or fails its hash check."""


class MissingDependencyError(EdgeqError):
    """A library a recipe or bundle needs is not installed."""


class DeviceError(EdgeqError):
    """The requested device (e.g. CUDA) is not available on this host."""


class AudioError(EdgeqError):
    """An audio file cannot be read or holds no samples."""


class DatasetError(EdgeqError):
    """A dataset spec, folder or manifest is invalid."""
