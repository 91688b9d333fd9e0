"""Seeded randomness: one independent stream per component, fractal fields, smooth series.

Every random component of the world draws from its own stream (:func:`stream`), derived
from the seed and the component's name (and year), so switching one component off (the
clouds, say) changes nothing else.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent random stream for one component (and year) of the world."""
    ints = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k)
                          for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def fractal(shape: tuple[int, int], rng: np.random.Generator, beta: float,
            max_wavelength: float, min_wavelength: float = 2.0) -> np.ndarray:
    """Zero-mean, unit-std fractal noise with power spectrum ~ f**-beta (wavelengths in px).

    Synthesised on a grid padded by a quarter so that the FFT's periodicity does not
    make opposite edges match.
    """
    h, w = shape
    ph, pw = sfft.next_fast_len(int(h * 1.25) + 8), sfft.next_fast_len(int(w * 1.25) + 8)
    white = rng.standard_normal((ph, pw), dtype=np.float32)
    spec = sfft.rfft2(white, workers=-1)
    fy = sfft.fftfreq(ph).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(pw).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f_lo, f_hi = 1.0 / max_wavelength, 1.0 / min_wavelength
    amp = np.power(np.maximum(f, f_lo), -beta / 2.0, dtype=np.float32)
    amp[f > f_hi] = 0.0
    amp[0, 0] = 0.0
    out = sfft.irfft2(spec * amp, s=(ph, pw), workers=-1)[:h, :w]
    out -= out.mean()
    sd = out.std()
    return (out / sd if sd > 0 else out).astype(np.float32)


def smooth1d(n: int, rng: np.random.Generator, corr: float) -> np.ndarray:
    """A smooth 1-D random series (unit std) of length ``n``, correlated over ``corr`` samples."""
    x = ndi.gaussian_filter1d(rng.standard_normal(n + 8 * int(corr) + 8), corr, mode="wrap")
    x = x[4 * int(corr) + 4:4 * int(corr) + 4 + n]
    return (x - x.mean()) / (x.std() or 1.0)

