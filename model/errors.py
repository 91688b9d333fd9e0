"""Exceptions raised by :mod:`model`.

``model/`` never imports :mod:`pipelines`, so it keeps its own small hierarchy. Like
:mod:`pipelines.errors`, every class also derives from the built-in type a caller would
naturally catch (``ValueError`` for bad records, artifacts or arguments).
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of all errors raised on purpose by :mod:`model`."""


class SchemaError(ModelError, ValueError):
    """A TFRecord patch or a parser request that does not match the record schema."""


class ArtifactError(ModelError, ValueError):
    """A model artifact that is missing, incomplete or inconsistent."""


class ConfigError(ModelError, ValueError):
    """An invalid model, loss, metric or augmentation argument."""
