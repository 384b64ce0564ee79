"""Typed errors. Each message says what happened and what to do about it."""

from __future__ import annotations


class AgeGenderError(Exception):
    """Base class of every error raised on purpose by ``core``."""


class InvalidImage(AgeGenderError, ValueError):
    """The input could not be turned into an RGB image (empty, not an image, truncated, too large)."""


class ImageTooLarge(InvalidImage):
    """The input is over a size limit: too many bytes, or too many pixels to decode safely."""


class FaceNotDetected(AgeGenderError, ValueError):
    """No face was found and the caller asked for at least one (``enforce_detection=True``)."""


class ModelNotFound(AgeGenderError, FileNotFoundError):
    """A model file or its metadata is missing."""


class WeightsMismatch(AgeGenderError, ValueError):
    """A weights file does not fit the network (no layer matched by name, or shapes differ)."""
