"""The project's exception hierarchy.

Every error raised on purpose by landslide-mapper derives from :class:`LandslideError`
and, like rasterio's, also from the built-in type a caller would naturally catch
(``ValueError`` for bad input, ``FileNotFoundError`` for missing files, ``OSError`` for
I/O failures). Messages name the offending value and say what to do about it.
"""

from __future__ import annotations


class LandslideError(Exception):
    """Base class of all landslide-mapper errors."""


class InputError(LandslideError, ValueError):
    """Invalid user input: a value, a file's content or a configuration."""


class ConfigError(InputError):
    """An invalid configuration value."""


class CRSError(InputError):
    """A missing, unknown or unusable coordinate reference system."""


class BandError(InputError):
    """An unknown band name, or a band a source or model lacks."""


class RegionError(InputError):
    """An area of interest that is empty, invalid, or outside the data."""


class GeometryError(InputError):
    """Empty or unrepairable vector geometry."""


class NoDataError(InputError):
    """Input that holds no valid pixels (all NaN or nodata)."""


class DataNotFoundError(LandslideError, FileNotFoundError):
    """A file, object or dataset that does not exist."""


class SourceError(LandslideError, OSError):
    """A failure reading from an imagery source (file, bucket, Earth Engine)."""


class OutputError(LandslideError, OSError):
    """A failure writing outputs (unwritable folder or bucket, full disk)."""


class CorruptOutputError(OutputError):
    """An output of an earlier run found damaged (truncated or overwritten) when reused.

    Attributes:
        path: The damaged file or object.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class TransientSourceError(SourceError):
    """A source failure that may pass on its own (HTTP 429 or 5xx, timeouts, drops).

    Attributes:
        exhausted: The source already retried it as often as its budget allows, so the
            chunk must not be retried again (retries would multiply, not add up).
    """

    def __init__(self, message: str, *, exhausted: bool = False) -> None:
        super().__init__(message)
        self.exhausted = exhausted


#: The two failure classes of a chunk (see :func:`failure_class`).
TRANSIENT, PERMANENT = "transient", "permanent"


def failure_class(exc: BaseException) -> str:
    """``transient`` (worth retrying) or ``permanent`` (retrying gives the same answer).

    Permanent: a corrupt file, a refused request (4xx other than 429), a missing band.
    Only :class:`TransientSourceError`, timeouts and connection failures are transient;
    every other error, including other :class:`SourceError`, is permanent.
    """
    if isinstance(exc, TransientSourceError | TimeoutError | ConnectionError):
        return TRANSIENT
    return PERMANENT


def worth_retrying(exc: BaseException) -> bool:
    """A transient failure that its source has not already retried to exhaustion."""
    return failure_class(exc) == TRANSIENT and not getattr(exc, "exhausted", False)
