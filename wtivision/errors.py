"""Exceptions raised by wtivision. All derive from :class:`WtivisionError`."""

from __future__ import annotations


class WtivisionError(Exception):
    """Base class of every error wtivision raises on purpose."""


class ModelError(WtivisionError):
    """A model is missing, altered, or not usable."""


class ModelNotFoundError(ModelError):
    pass


class ModelIntegrityError(ModelError):
    """The model file's SHA-256 differs from the manifest."""


class ImageError(WtivisionError):
    """An input could not be read as an image. ``code`` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "unreadable") -> None:
        super().__init__(message)
        self.code = code


class DatasetError(WtivisionError):
    """A labelled dataset folder is missing or not laid out as expected."""


class MissingExtraError(WtivisionError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional module lazily, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on environment
        what = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{module!r} is needed{what} but is not installed: pip install 'wtivision[{extra}]'"
        ) from exc
