"""The terrain: a valley network and the DEM carved around it.

A main north-south river with tributaries on both sides and steep gullies on all of them
(:func:`_channels`); the DEM is the soft lower envelope of every channel's valley-wall
profile, plus fractal hills and roughness, stretched above the alpine base
(:func:`make_terrain`). The result keeps what land cover and landslides need: slope,
aspect, curvature, distances to the river and tributaries, and height within the relief.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipelines.geo.terrain import terrain_products
from pipelines.synth.frame import Frame
from pipelines.synth.noise import fractal, smooth1d, stream


@dataclass
class Channel:
    """A valley axis: points in local metres, floor elevation and flat-floor half-width."""

    xy: np.ndarray
    z: np.ndarray
    order: int
    half_floor: np.ndarray


@dataclass
class Terrain:
    """The DEM and its derived fields, on the padded working grid."""

    dem: np.ndarray            # padded, float64
    slope: np.ndarray          # padded, degrees
    aspect: np.ndarray
    curvature: np.ndarray
    channels: list[Channel]
    d_main: np.ndarray         # padded distance to the main river axis (m)
    main_s: np.ndarray         # padded: position (m) along the main axis of its nearest point
    d_trib: np.ndarray         # padded distance to first-order tributary axes (m)
    trib_s: np.ndarray         # padded: relative position (0 mouth .. 1 head) of nearest trib
    rel_height: np.ndarray     # padded 0 (valley) .. 1 (ridge) within ~1 km
    main_axis: np.ndarray      # (k, 2) main river axis, local metres
    junctions: np.ndarray      # (m, 2) tributary mouths, local metres


def _walk(start: np.ndarray, heading: float, length: float, step: float,
          rng: np.random.Generator, wiggle: float) -> np.ndarray:
    """A gently meandering polyline from ``start`` (heading in radians, y southwards).

    The direction deviates from ``heading`` by a smooth random angle of std ``wiggle``
    (correlated over ~300 m), so channels bend without curling up.
    """
    n = max(2, int(length / step) + 1)
    ang = heading + wiggle * smooth1d(n, rng, max(2.0, 300.0 / step))
    d = np.column_stack([np.cos(ang), np.sin(ang)]) * step
    return start + np.vstack([[0.0, 0.0], np.cumsum(d[:-1], axis=0)])


def _branch(parent: Channel, k: int, side: float, rng: np.random.Generator, ps: float,
            length: float, grad: float, order: int, angle: tuple[float, float]) -> Channel:
    """A side channel leaving ``parent`` at point ``k``, pointing upstream-ish on ``side``."""
    xy = parent.xy
    k0, k1 = max(0, k - 2), min(len(xy) - 1, k + 2)
    up = xy[k1] - xy[k0]  # the parent's upstream direction (its points run upstream)
    base = math.atan2(up[1], up[0])
    heading = base + side * math.radians(rng.uniform(*angle))
    pts = _walk(xy[k], heading, length, ps, rng, wiggle=0.25)
    s = np.hypot(*np.diff(pts, axis=0, prepend=pts[:1]).T).cumsum()
    z = parent.z[k] + grad * s * (1.0 + s / (2.0 * length))
    hf = np.zeros(len(pts)) if order == 2 else np.clip(25.0 * (1.0 - s / 1500.0), 0.0, None)
    return Channel(pts, z, order, hf)


def _channels(frame: Frame, seed: int) -> tuple[list[Channel], np.ndarray]:
    """The valley network: a main N-S river, tributaries on both sides, gullies on all."""
    rng = stream(seed, "channels")
    ps, size = frame.ps, frame.np_ * frame.ps
    margin = 800.0
    # Main river: points run upstream, from the south edge (y = size) to the north.
    y = np.arange(size + margin, -margin, -ps / 2.0)
    amp1 = min(600.0, 0.07 * size)
    x = (size * rng.uniform(0.5, 0.6)
         + amp1 * np.sin(2 * np.pi * y / rng.uniform(4000, 7000) + rng.uniform(0, 2 * np.pi))
         + 120.0 * np.sin(2 * np.pi * y / rng.uniform(1100, 1700) + rng.uniform(0, 2 * np.pi))
         + 60.0 * smooth1d(len(y), rng, 80.0))
    z_main = rng.uniform(1450.0, 1550.0) + rng.uniform(0.015, 0.025) * (size + margin - y)
    floor = np.clip(110.0 + 35.0 * smooth1d(len(y), rng, 150.0), 60.0, 180.0)
    main = Channel(np.column_stack([x, y]), z_main, 0, floor)
    chans = [main]
    junctions = []
    step_main = ps / 2.0
    for side in (-1.0, 1.0):
        # Tributaries every ~2 km, with gullies on both of their banks.
        s = rng.uniform(0.1, 1.0) * 2000.0
        while s < len(y) * step_main:
            k = int(s / step_main)
            trib = _branch(main, k, -side, rng, ps, rng.uniform(3500.0, 8000.0),
                           rng.uniform(0.09, 0.15), 1, (50.0, 80.0))
            chans.append(trib)
            junctions.append(main.xy[k])
            for tside in (-1.0, 1.0):
                t = rng.uniform(0.2, 1.0) * 700.0
                while t < len(trib.xy) * ps * 0.85:
                    kt = int(t / ps)
                    chans.append(_branch(trib, kt, tside, rng, ps, rng.uniform(500.0, 1600.0),
                                         rng.uniform(0.22, 0.38), 2, (40.0, 75.0)))
                    t += rng.uniform(500.0, 900.0)
            s += rng.uniform(1500.0, 2600.0)
        # Short steep gullies straight off the main valley between the tributaries.
        s = rng.uniform(0.0, 1.0) * 700.0
        while s < len(y) * step_main:
            k = int(s / step_main)
            chans.append(_branch(main, k, -side, rng, ps, rng.uniform(500.0, 1500.0),
                                 rng.uniform(0.28, 0.42), 2, (60.0, 90.0)))
            s += rng.uniform(500.0, 900.0)
    return chans, np.array(junctions).reshape(-1, 2)


def _burn_points(xy: np.ndarray, values: np.ndarray, shape: tuple[int, int], ps: float,
                 reduce: str = "min") -> np.ndarray:
    """Raster of ``values`` at the points ``xy`` (NaN elsewhere), min/max per cell."""
    col = np.floor(xy[:, 0] / ps).astype(np.int64)
    row = np.floor(xy[:, 1] / ps).astype(np.int64)
    ok = (row >= 0) & (row < shape[0]) & (col >= 0) & (col < shape[1])
    fill = np.inf if reduce == "min" else -np.inf
    out = np.full(shape, fill)
    op = np.minimum if reduce == "min" else np.maximum
    op.at(out, (row[ok], col[ok]), values[ok])
    out[~np.isfinite(out)] = np.nan
    return out


def distance_to(cells: np.ndarray, ps: float, indices: bool = False):
    """Euclidean distance (m) to the True cells of ``cells`` (inf-like if there are none)."""
    if not cells.any():
        big = np.full(cells.shape, 1e7)
        if indices:
            idx = np.zeros((2, *cells.shape), dtype=np.int32)
            return big, idx
        return big
    return ndi.distance_transform_edt(~cells, sampling=ps, return_indices=indices)


#: Valley-wall profile per channel order: ``z = floor + H (1 - exp(-d / L)) + k d`` with
#: ``d`` the distance (m) beyond the flat floor, and the reach (m) over which it is computed.
_PROFILES = {0: (2500.0, 2600.0, 0.10, None), 1: (720.0, 600.0, 0.10, 3500.0),
             2: (330.0, 300.0, 0.10, 2500.0)}
#: Smoothing (m) of the nearest-floor field per channel order.
_FLOOR_SMOOTH = {0: 150.0, 1: 150.0, 2: 60.0}
#: Elevations above _ALPINE_BASE (m) are stretched by 1 + _ALPINE_STRETCH.
_ALPINE_BASE = 3000.0
_ALPINE_STRETCH = 0.35
#: Margin (m) around the working grid within which channels still shape the terrain.
_ENV_MARGIN = 1500.0
#: Softness (m) of the lower envelope: rounds ridge crests.
_SOFT = 80.0


def _envelope(chans: list[Channel], n: int, ps: float) -> np.ndarray:
    """Soft lower envelope of every channel's valley-wall profile on an ``n x n`` grid.

    Each channel's distance field is computed (EDT) only within its reach, so hundreds of
    gullies cost little; the main valley covers the whole grid.
    """
    acc_min = np.full((n, n), np.inf)
    acc_sum = np.zeros((n, n))
    allxy = np.vstack([c.xy for c in chans])
    d_any = distance_to(np.isfinite(_burn_points(allxy, np.zeros(len(allxy)), (n, n), ps)), ps)
    # Hard minimum on valley floors (no soft-min dip where channels meet), soft on ridges.
    soft = 5.0 + (_SOFT - 5.0) * (1.0 - np.exp(-d_any / 250.0))
    for ch in chans:
        H, L, k, reach = _PROFILES[ch.order]
        if reach is None:
            r0, r1, c0, c1 = 0, n, 0, n
        else:
            pad = reach / ps
            c0 = max(0, int(ch.xy[:, 0].min() / ps - pad))
            c1 = min(n, int(ch.xy[:, 0].max() / ps + pad) + 1)
            r0 = max(0, int(ch.xy[:, 1].min() / ps - pad))
            r1 = min(n, int(ch.xy[:, 1].max() / ps + pad) + 1)
            if c1 <= c0 or r1 <= r0:
                continue
        local = ch.xy - np.array([c0 * ps, r0 * ps])
        zf = _burn_points(local, ch.z, (r1 - r0, c1 - c0), ps, "min")
        cells = np.isfinite(zf)
        if not cells.any():
            continue
        hf = np.nan_to_num(_burn_points(local, ch.half_floor, zf.shape, ps, "max"))
        d, (ii, jj) = ndi.distance_transform_edt(~cells, sampling=ps, return_indices=True)
        # The floor of the nearest channel point jumps across the medial axis of a bend:
        # smooth it so the walls do not get cliffs there.
        floor = ndi.gaussian_filter(zf[ii, jj], _FLOOR_SMOOTH[ch.order] / ps, mode="nearest")
        dd = np.maximum(d - hf[ii, jj], 0.0)
        cand = floor + H * (1.0 - np.exp(-dd / L)) + k * dd
        if reach is not None:  # fade out with a rising penalty, then stop
            cand += np.maximum(d - 0.5 * reach, 0.0) ** 2 / reach
            cand[d > reach] = np.inf
        am, asum = acc_min[r0:r1, c0:c1], acc_sum[r0:r1, c0:c1]
        sw = soft[r0:r1, c0:c1]
        new_min = np.minimum(am, cand)
        with np.errstate(invalid="ignore"):
            scale = np.where(np.isfinite(am), np.exp(-(am - new_min) / sw), 0.0)
            add = np.where(np.isfinite(cand), np.exp(-(cand - new_min) / sw), 0.0)
        acc_sum[r0:r1, c0:c1] = asum * scale + add
        acc_min[r0:r1, c0:c1] = new_min
    return acc_min - soft * np.log(acc_sum)


def _scaled_noise(shape: tuple[int, int], rng: np.random.Generator, ps: float, beta: float,
                  max_wl_m: float, min_wl_m: float, grad_rms: float) -> np.ndarray:
    """Fractal noise scaled so that its slope (m/m) has the RMS ``grad_rms``."""
    n = fractal(shape, rng, beta, max_wl_m / ps, max(2.0, min_wl_m / ps)).astype(np.float64)
    gy, gx = np.gradient(n, ps)
    rms = float(np.sqrt(np.mean(gx * gx + gy * gy)))
    return n * (grad_rms / rms if rms > 0 else 0.0)


def make_terrain(frame: Frame, seed: int) -> Terrain:
    """The DEM: soft lower envelope of valley-wall profiles around every channel, plus noise."""
    ps = frame.ps
    N = frame.np_
    chans, junctions = _channels(frame, seed)
    # The envelope is smooth at the scale of tens of metres: compute it on a coarser grid,
    # extended by a margin so that channels just outside the world shape its edges.
    f = max(1, round(20.0 / ps))
    cps = ps * f
    m = math.ceil(_ENV_MARGIN / cps)
    shift = np.array([m * cps, m * cps])
    ext = [Channel(c.xy + shift, c.z, c.order, c.half_floor) for c in chans]
    env = _envelope(ext, math.ceil(N / f) + 2 * m, cps)
    r = (np.arange(N) + 0.5) / f - 0.5 + m  # bilinear upsampling, pixel centres aligned
    env = ndi.map_coordinates(env, np.meshgrid(r, r, indexing="ij"), order=1, mode="nearest")
    main_axis = chans[0].xy
    along = np.arange(len(main_axis), dtype=np.float64) * (ps / 2.0)
    ms = _burn_points(main_axis, along, (N, N), ps, "min")
    d_main, (mi, mj) = distance_to(np.isfinite(ms), ps, indices=True)
    main_s = np.nan_to_num(ms[mi, mj])
    tribs = [c for c in chans if c.order == 1]
    if tribs:
        txy = np.vstack([c.xy for c in tribs])
        ts = np.concatenate([np.linspace(0.0, 1.0, len(c.xy)) for c in tribs])
        ts_r = _burn_points(txy, ts, (N, N), ps, "min")
        d_trib, (ti, tj) = distance_to(np.isfinite(ts_r), ps, indices=True)
        trib_s = np.nan_to_num(ts_r[ti, tj], nan=1.0)
    else:
        d_trib, trib_s = np.full((N, N), 1e7), np.ones((N, N))
    allxy = np.vstack([c.xy for c in chans])
    d_any = distance_to(np.isfinite(_burn_points(allxy, np.zeros(len(allxy)), (N, N), ps)), ps)

    rng = stream(seed, "dem-noise")
    taper = 1.0 - np.exp(-d_any / 150.0)
    hills = _scaled_noise((N, N), rng, ps, 2.6, 2500.0, 60.0, 0.16)
    rough = _scaled_noise((N, N), rng, ps, 2.0, 150.0, 20.0, 0.07)
    dem = env + taper * hills
    # High terrain is steeper and rockier: stretch elevations above ~3000 m.
    dem = dem + _ALPINE_STRETCH * np.maximum(dem - _ALPINE_BASE, 0.0)
    dem = np.clip(dem + rough, 1000.0, 7500.0)

    prods = terrain_products(dem, ps, ("slope", "aspect", "curvature"))
    for a in prods.values():  # the 1-pixel border of the padded grid: copy the neighbour
        a[0], a[-1], a[:, 0], a[:, -1] = a[1], a[-2], a[:, 1], a[:, -2]
    win = max(3, round(1000.0 / ps) | 1)
    lo = ndi.uniform_filter(ndi.minimum_filter(dem, size=win, mode="nearest"), size=win,
                            mode="nearest")
    hi = ndi.uniform_filter(ndi.maximum_filter(dem, size=win, mode="nearest"), size=win,
                            mode="nearest")
    rel = np.clip((dem - lo) / np.maximum(hi - lo, 1.0), 0.0, 1.0)
    return Terrain(dem, prods["slope"].astype(np.float64), prods["aspect"].astype(np.float64),
                    prods["curvature"].astype(np.float64), chans, d_main, main_s, d_trib,
                    trib_s, rel, main_axis, junctions)
