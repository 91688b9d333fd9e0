"""Land cover from the terrain: forest, shrub, rock, snow, the river, settlements, roads.

Classes follow elevation, slope, aspect, ridges and valleys; settlements with terraced
field parcels sit on gentle mid-slopes near the river, a valley road runs along one bank
and switchbacks climb to every settlement (:func:`make_landcover`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio import features
from scipy import ndimage as ndi

from pipelines.geo.terrain import curvature
from pipelines.synth.frame import Frame
from pipelines.synth.noise import fractal, smooth1d, stream
from pipelines.synth.terrain import Terrain, distance_to

FOREST, SHRUB, ROCK, SNOW, WATER, GRAVEL, ROAD, SETTLEMENT, FIELDS = range(1, 10)

#: Land-cover codes of ``landcover.tif`` (0 is nodata).
LANDCOVER: dict[int, str] = {
    FOREST: "forest",
    SHRUB: "shrub_grass",
    ROCK: "bare_rock",
    SNOW: "snow_ice",
    WATER: "water",
    GRAVEL: "river_gravel",
    ROAD: "road",
    SETTLEMENT: "settlement",
    FIELDS: "fields",
}


@dataclass
class Land:
    """The land cover and what landslides and imagery need from it (world grid)."""

    lc: np.ndarray             # uint8 classes (world grid)
    parcels: np.ndarray        # int32 field-parcel id (0 outside fields)
    n_parcels: int
    d_road: np.ndarray         # distance to the nearest road (m)
    fan: np.ndarray            # bool: debris fans / tributary beds (gravel off the main river)


def _rasterize_lines(lines: list[np.ndarray], frame: Frame) -> np.ndarray:
    """Burn polylines (local padded metres) 1 pixel wide onto the world grid."""
    geoms = [shapely.LineString(frame.to_map(xy)) for xy in lines if len(xy) >= 2]
    if not geoms:
        return np.zeros(frame.grid.shape, dtype=bool)
    return features.rasterize([(g, 1) for g in geoms], out_shape=frame.grid.shape,
                              transform=frame.grid.affine, fill=0, dtype="uint8") > 0


def _offset_line(axis: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """A polyline at a signed perpendicular ``offset`` (m, per point) from ``axis``."""
    t = np.gradient(axis, axis=0)
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    normal = np.column_stack([-t[:, 1], t[:, 0]])
    return axis + normal * offset[:, None]


def _switchbacks(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zig-zag road from ``a`` to ``b`` (local metres), as built up steep hillsides."""
    length = float(np.hypot(*(b - a)))
    n_turns = max(1, int(length / rng.uniform(120.0, 220.0)))
    t = np.linspace(0.0, 1.0, max(8, 16 * n_turns))
    tri = 2.0 * np.abs((t * n_turns) % 1.0 - 0.5) - 0.5         # -0.5 .. 0.5
    amp = rng.uniform(70.0, 160.0) * np.sin(np.pi * t) ** 0.3   # no zig at the ends
    d = (b - a) / max(length, 1e-9)
    perp = np.array([-d[1], d[0]])
    return a + np.outer(t, b - a) + np.outer(tri * amp * 2.0, perp)


def make_landcover(frame: Frame, T: Terrain, seed: int) -> Land:
    """Classes from elevation, slope, aspect, ridges and valleys; settlements and roads."""
    ps, n = frame.ps, frame.n
    rng = stream(seed, "landcover")
    dem, slope = frame.crop(T.dem), frame.crop(T.slope)
    asp = np.radians(frame.crop(T.aspect))
    north = np.cos(asp)
    d_main, main_s = frame.crop(T.d_main), frame.crop(T.main_s)
    d_trib, trib_s = frame.crop(T.d_trib), frame.crop(T.trib_s)
    shape = (n, n)

    def noise(beta: float, max_m: float, min_m: float = 20.0) -> np.ndarray:
        return fractal(shape, rng, beta, max_m / ps, max(2.0, min_m / ps))

    n_tree, n_snow, n_rock = noise(2.5, 2000.0), noise(2.5, 1500.0), noise(2.2, 800.0)
    n_shrub, n_bed, n_house = noise(2.4, 1200.0, 40.0), noise(2.0, 400.0), noise(1.5, 200.0)

    lc = np.full(shape, FOREST, dtype=np.uint8)
    # Shrub and grass: patches, more on dry south-facing slopes.
    lc[n_shrub + 0.5 * (-north) > 0.75] = SHRUB
    # Alpine shrub/grass above the tree line, north-facing slopes keep trees higher.
    treeline = 3450.0 + 120.0 * n_tree + 80.0 * north
    lc[dem > treeline] = SHRUB
    # Bare rock: cliffs, high rocky terrain, bare ridge crests.
    smooth = ndi.gaussian_filter(frame.crop(T.dem), 30.0 / ps) if ps < 30 else dem
    ridge = curvature(np.pad(smooth, 1, mode="edge"), ps)[1:-1, 1:-1]
    high = dem > 2500.0
    ridge_thr = np.quantile(ridge[high], 0.93) if high.sum() > 100 else np.inf
    rock = (slope > 50.0 + 4.0 * n_rock) | ((dem > 3700.0 + 150.0 * n_rock) & (slope > 28.0))
    rock |= high & (ridge > ridge_thr) & (n_rock > -0.4)
    lc[rock] = ROCK
    lc[dem > 4000.0 + 80.0 * n_snow - 120.0 * north] = SNOW

    # Settlements with terraced fields on gentle mid-slopes not far from the river.
    area_km2 = (n * ps / 1000.0) ** 2
    want = max(1, round(area_km2 / 10.0 * rng.uniform(0.8, 1.25)))
    ok = (slope < 24.0) & (dem > 1600.0) & (dem < 2900.0) & (d_main > 150.0)
    weight = np.where(ok, np.exp(-d_main / 3000.0) * (24.0 - slope), 0.0)
    centres: list[tuple[int, int]] = []
    if weight.sum() > 0:
        g = np.log(np.maximum(weight.ravel(), 1e-300)) + rng.gumbel(size=weight.size)
        g[weight.ravel() <= 0] = -np.inf
        top = np.argpartition(-g, min(50 * want, g.size - 1))[: 50 * want]
        for flat in top[np.argsort(-g[top], kind="stable")]:
            if not np.isfinite(g[flat]) or len(centres) >= want:
                break
            r, c = divmod(int(flat), n)
            if all(math.hypot(r - r2, c - c2) * ps > 900.0 for r2, c2 in centres):
                centres.append((r, c))
    seeds = np.zeros(shape, dtype=np.int32)
    fields = np.zeros(shape, dtype=bool)
    town = np.zeros(shape, dtype=bool)
    for k, (r, c) in enumerate(centres):
        seeds[r, c] = k + 1
    if centres:
        d_c, (ci, cj) = ndi.distance_transform_edt(seeds == 0, sampling=ps,
                                                   return_indices=True)
        k_near = seeds[ci, cj] - 1
        r_core = rng.uniform(60.0, 130.0, len(centres))
        r_field = rng.uniform(250.0, 500.0, len(centres))
        wobble = 1.0 + 0.25 * n_bed
        town = (d_c < r_core[k_near] * wobble) & (slope < 32.0) & (n_house > -0.6)
        fields = (d_c < r_field[k_near] * wobble) & (slope < 28.0) & ~town & (dem < 3200.0)
    lc[fields] = FIELDS
    lc[town] = SETTLEMENT
    parcels = np.zeros(shape, dtype=np.int32)
    n_parcels = 0
    if fields.any():
        # Terraced parcels: Voronoi cells of random seeds, ~0.2 ha each.
        k = max(1, int(fields.sum() * ps * ps / 2000.0))
        fr, fc = np.nonzero(fields)
        pick = rng.choice(fr.size, size=min(k, fr.size), replace=False)
        pseed = np.zeros(shape, dtype=np.int32)
        pseed[fr[pick], fc[pick]] = np.arange(1, pick.size + 1)
        _, (pi, pj) = ndi.distance_transform_edt(pseed == 0, return_indices=True)
        parcels = np.where(fields, pseed[pi, pj], 0)
        n_parcels = int(pick.size)

    # River: water channel, gravel bars and beds that widen and narrow downstream.
    s_idx = np.clip((main_s / (ps / 2.0)).astype(np.int64), 0, None)
    n_axis = len(T.main_axis)
    bed_series = np.clip(70.0 + 30.0 * smooth1d(n_axis, rng, 120.0), 35.0, 140.0)
    water_series = np.clip(14.0 + 4.0 * smooth1d(n_axis, rng, 80.0), 8.0, 24.0)
    s_idx = np.minimum(s_idx, n_axis - 1)
    bed_hw = bed_series[s_idx] * (1.0 + 0.25 * n_bed)
    gravel = d_main < bed_hw
    # Tributary beds near their mouths and debris fans at the junctions.
    fan = (d_trib < 25.0 * (1.0 - trib_s) ** 2 + 4.0) & (trib_s < 0.35)
    if len(T.junctions):
        jmask = np.zeros(shape, dtype=bool)
        jrc = np.floor((T.junctions[:, ::-1]) / ps).astype(int) - frame.pad
        inside = (jrc >= 0).all(axis=1) & (jrc < n).all(axis=1)
        jmask[jrc[inside, 0], jrc[inside, 1]] = True
        if jmask.any():
            d_j = distance_to(jmask, ps)
            fan |= (d_j < 120.0 * (1.0 + 0.5 * n_bed)) & (slope < 22.0)
    lc[gravel | fan] = GRAVEL
    water = d_main < water_series[s_idx]
    lc[water] = WATER

    # Roads: a valley road along one bank, switchbacks up to every settlement.
    side = float(rng.choice([-1.0, 1.0]))
    offset = side * (bed_series + np.clip(130.0 + 70.0 * smooth1d(n_axis, rng, 300.0), 60.0,
                                          300.0))
    main_road = _offset_line(T.main_axis, offset)
    lines = [main_road]
    for r, c in centres:
        here = np.array([(c + frame.pad + 0.5) * ps, (r + frame.pad + 0.5) * ps])
        k = int(np.argmin(np.hypot(*(main_road - here).T)))
        lines.append(_switchbacks(main_road[k], here, rng))
    road = _rasterize_lines(lines, frame) & ~water
    lc[road] = ROAD
    d_road = distance_to(road, ps)
    return Land(lc, parcels, n_parcels, d_road, (gravel | fan) & ~water)
