"""Base of the errors raised by the model package."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error the model package raises on purpose."""
