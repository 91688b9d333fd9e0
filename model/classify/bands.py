"""The bands a model takes, picked from an image by name, or by count when it names none.

One rule for every place that feeds images to a model (:mod:`model.classify.data` for
``classify-train`` and ``classify-eval``, ``landslides explain``): an image whose bands are
named (GeoTIFF band descriptions, or jpg/png ``red, green, blue``) gives the bands asked
for by name, in the order asked for, whatever order it stores them in; an image whose
bands are unnamed (``b1, b2, ...``) is taken as it is when it has exactly as many bands.
Anything else is refused: feeding the blue band as ``B4`` would go unnoticed.

No TensorFlow here, so that callers can import it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from model.errors import ConfigError

#: Names of unnamed bands (:func:`model.classify.data.read_image` of an undescribed file).
GENERIC_BAND = re.compile(r"b\d+")
#: What to do about a refused image, unless the caller says better.
DEFAULT_FIX = ("give images holding those bands: named so (GeoTIFF band descriptions), or "
               "unnamed and exactly that many, in that order")


def is_generic(bands: Sequence[str]) -> bool:
    """Whether band names say nothing of what the bands hold (``b1, b2, ...``)."""
    return all(GENERIC_BAND.fullmatch(b) for b in bands)


def band_order(have: Sequence[str], want: Sequence[str], where: str,
               fix: str = DEFAULT_FIX) -> list[int]:
    """Indices of the bands ``want`` among an image's bands ``have`` (see the module).

    Args:
        have: The image's band names, in channel order.
        want: The bands to feed, in order.
        where: What the image is (a file path, a patch key), for the message.
        fix: What to do about a refused image, for the message.

    Raises:
        ConfigError: the image lacks a band of ``want`` (named), has another number of
            bands (unnamed), or names its bands while ``want`` are unnamed; the message
            names the image, its bands and those expected.
    """
    have, want = list(have), list(want)
    generic = is_generic(have)
    if not generic:
        missing = [b for b in want if b not in have]
        if not missing:
            return [have.index(b) for b in want]
        if is_generic(want) and len(have) == len(want):
            raise ConfigError(
                f"{where} has named bands {have}, the expected ones {want} are unnamed, so "
                f"which is which is unknown: {fix}")
        raise ConfigError(f"{where} has {len(have)} band(s) {have}, without {missing} of "
                          f"the expected {want}: {fix}")
    if len(have) == len(want):
        return list(range(len(have)))
    raise ConfigError(f"{where} has {len(have)} band(s) {have} (unnamed), not the "
                      f"{len(want)} expected {want}: {fix}")


def select_bands(pixels: np.ndarray, have: Sequence[str], want: Sequence[str], where: str,
                 fix: str = DEFAULT_FIX) -> np.ndarray:
    """The bands ``want`` of ``(..., c)`` pixels whose channels are ``have``.

    Args:
        pixels: ``(..., c)`` pixels, ``c == len(have)``.
        have: Their band names, in channel order.
        want: The bands to feed, in order.
        where: What the image is, for the message.
        fix: What to do about a refused image, for the message.

    Returns:
        ``(..., len(want))`` pixels in the order of ``want`` (``pixels`` itself when that
        is already their order).

    Raises:
        ConfigError: see :func:`band_order`.
    """
    if pixels.shape[-1] != len(have):
        raise ConfigError(f"{where} has {pixels.shape[-1]} channel(s) but {len(have)} band "
                          f"name(s) {list(have)}: give one name per channel")
    order = band_order(have, want, where, fix)
    if order == list(range(pixels.shape[-1])):
        return pixels
    return pixels[..., order]


__all__ = ["DEFAULT_FIX", "GENERIC_BAND", "band_order", "is_generic", "select_bands"]
