"""Landslides: where they start, the shapes they take, how they reactivate and revegetate.

Landslides start on steep slopes (probability rising steeply above ~30 degrees), run
downslope along the DEM's gradient (so they are elongated in the aspect direction), have
heavy-tailed (inverse-gamma) areas, occur at a background rate every year, massively in
the event year (an earthquake: more near ridge crests) and at a decaying elevated rate
after it. Some reactivate (grow upslope); all revegetate over a few years, big ones more
slowly, and drop out of the inventories once more than half recovered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from rasterio import features
from scipy import ndimage as ndi
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pipelines.geo.grid import PixelGrid
from pipelines.synth.config import WorldConfig
from pipelines.synth.frame import Frame
from pipelines.synth.landcover import Land
from pipelines.synth.noise import smooth1d, stream
from pipelines.synth.terrain import Terrain

#: New landslides per km2: background every year, and in the event year.
BACKGROUND_RATE = 0.45
EVENT_RATE = 4.0
#: Yearly probability that a landslide still visible (or recently revegetated) reactivates.
REACTIVATION_P = 0.02
#: Inverse-gamma area distribution (Malamud et al. 2004 shape): tail exponent, scale (m2).
AREA_SHAPE = 1.4
AREA_SCALE = 1600.0
AREA_MAX = 600_000.0
#: Years of background landslides before the first year that may still be visible in it.
LEGACY_YEARS = 2

#: Landslide susceptibility weight per land-cover class (road cuts fail more often).
_LC_SUSCEPTIBILITY = np.array([0, 1.0, 1.0, 0.35, 0.0, 0.0, 0.0, 1.5, 0.15, 0.6],
                              dtype=np.float64)
#: Inventory statuses.
STATUSES = ("new", "active", "reactivated")
#: Recovery from which a scar is no longer drawn in the images (fully revegetated).
DRAWN_MAX_RECOVERY = 0.97


@dataclass
class Disturbance:
    """One failure of a landslide: its first trigger or a reactivation."""

    year: int
    kind: str                 # "new" or "reactivated"
    geometry: BaseGeometry    # shapely polygon (map coordinates)
    visible_years: float      # years until more than half revegetated
    crown: np.ndarray         # (col, row) of the crown, world pixels
    length: float             # metres
    width: float              # metres


@dataclass
class Landslide:
    """One landslide: its material and every failure (the first, then reactivations)."""

    lid: int
    trigger_year: int
    rockiness: float          # 0 soil .. 1 rock debris
    redness: float            # soil colour factor
    history: list[Disturbance] = field(default_factory=list)

    def state(self, year: int) -> Disturbance | None:
        """The latest failure at or before ``year``."""
        past = [d for d in self.history if d.year <= year]
        return past[-1] if past else None


@dataclass
class Slopes:
    """What landslide placement and shapes need, on the world grid."""

    slope: np.ndarray
    res: float                # pixel size (m)
    down: np.ndarray          # (2, h, w) unit downslope vector in (col, row) pixels
    susceptibility: np.ndarray
    bg_weight: np.ndarray
    event_weight: np.ndarray


def make_slopes(frame: Frame, T: Terrain, land: Land) -> Slopes:
    """Downslope directions and the background and earthquake susceptibility weights."""
    ps = frame.ps
    slope = frame.crop(T.slope)
    zs = ndi.gaussian_filter(T.dem, 20.0 / ps)
    gy, gx = np.gradient(zs, ps)          # gy: along rows (southwards)
    norm = np.maximum(np.hypot(gx, gy), 1e-9)
    down = frame.crop(np.stack([-gx / norm, -gy / norm]))
    rel = frame.crop(T.rel_height)
    n = frame.n
    susc = 1.0 / (1.0 + np.exp(-(slope - 40.0) / 2.5)) * _LC_SUSCEPTIBILITY[land.lc]
    near_road = np.exp(-land.d_road / 60.0)
    bg = susc * (0.5 + (1.0 - rel)) * (1.0 + 1.5 * near_road)
    # Earthquake: topographic amplification near ridge crests, shaking fading eastwards.
    shake = 1.0 - 0.3 * (np.arange(n) / max(n - 1, 1))[None, :]
    ev = susc * (0.3 + 1.7 * rel ** 1.5) * shake
    return Slopes(slope, ps, down, susc, bg, ev)


def _sample_sites(weight: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct pixels drawn with probability ~ ``weight`` (Gumbel top-k); (k, 2) rc."""
    w = weight.ravel()
    k = min(k, int(np.count_nonzero(w > 0)))
    if k <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    with np.errstate(divide="ignore"):
        key = np.log(w) + rng.gumbel(size=w.size)
    top = np.argpartition(-key, k - 1)[:k]
    top = top[np.argsort(-key[top], kind="stable")]
    return np.column_stack(np.divmod(top, weight.shape[1]))


def _arc(centre: np.ndarray, r: float, a0: float, a1: float, n: int = 7) -> np.ndarray:
    t = np.linspace(a0, a1, n)[1:-1]
    return centre + r * np.column_stack([np.cos(t), np.sin(t)])


def _outline(path_px: np.ndarray, radii_m: np.ndarray, grid: PixelGrid) -> BaseGeometry:
    """A ribbon of varying half-width ``radii_m`` along a path, with round ends.

    Built as one ring (left bank, toe cap, right bank, crown cap) and repaired where a
    tight bend makes it cross itself: a smooth elongated polygon in map coordinates.
    """
    a, b, c, d, e, f = grid.transform
    xs = c + a * path_px[:, 0] + b * path_px[:, 1]
    ys = f + d * path_px[:, 0] + e * path_px[:, 1]
    P = np.column_stack([xs, ys])
    r = np.asarray(radii_m, dtype=np.float64)
    keep = np.concatenate([[True], np.hypot(*np.diff(P, axis=0).T) > 1e-6])
    P, r = P[keep], r[keep]
    if len(P) < 2:
        return shapely.Point(P[0]).buffer(float(r[0]), quad_segs=6)
    t = np.gradient(P, axis=0)
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-12)[:, None]
    nrm = np.column_stack([-t[:, 1], t[:, 0]])
    left, right = P + nrm * r[:, None], P - nrm * r[:, None]
    a_end = math.atan2(nrm[-1, 1], nrm[-1, 0])
    a_start = math.atan2(-nrm[0, 1], -nrm[0, 0])
    ring = np.vstack([left, _arc(P[-1], r[-1], a_end, a_end - math.pi), right[::-1],
                      _arc(P[0], r[0], a_start, a_start - math.pi)])
    poly = shapely.Polygon(ring)
    if not poly.is_valid:
        poly = shapely.union_all(shapely.get_parts(shapely.make_valid(poly)))
        poly = shapely.union_all([g for g in shapely.get_parts(poly)
                                  if g.geom_type == "Polygon"])
    return poly


def _trace(start: np.ndarray, length: float, step: float, S: Slopes, lateral: float,
           stop_slope: float, uphill: bool = False) -> tuple[np.ndarray, float]:
    """Follow the steepest descent (or ascent) from ``start`` (col, row) for ``length`` m.

    Going down, the mass stops where the ground gets gentler than ``stop_slope`` degrees
    (once 30% of the way is done); going up (to move a crown), the climb stops below such
    gentle ground (ridge shoulders). Both stop at the world's edge. Returns the path
    (pixels) and the distance travelled (m).
    """
    ps = float(S.res)
    n = S.slope.shape[0]
    pts = [start.astype(float)]
    pos = start.astype(float)
    travelled = 0.0
    sign = -1.0 if uphill else 1.0
    while travelled < length:
        r, c = int(pos[1]), int(pos[0])
        if not (0 <= r < n and 0 <= c < n):
            break
        d = sign * S.down[:, r, c]
        d = d + lateral * np.array([-d[1], d[0]])
        d /= max(math.hypot(d[0], d[1]), 1e-9)
        nxt = pos + d * (step / ps)
        if uphill:
            rn, cn = int(nxt[1]), int(nxt[0])
            if not (0 <= rn < n and 0 <= cn < n) or S.slope[rn, cn] < stop_slope:
                break
        pos = nxt
        travelled += step
        pts.append(pos.copy())
        if not uphill and travelled > 0.3 * length and S.slope[r, c] < stop_slope:
            break
    return np.array(pts), travelled


def _failure(crown: np.ndarray, area: float, ratio: float, debris_flow: bool, S: Slopes,
             grid: PixelGrid, rng: np.random.Generator) -> tuple[object, float, float]:
    """Trace a landslide downslope from ``crown`` (col, row) and return its outline.

    The body follows the DEM's steepest descent for about ``sqrt(area * ratio)`` metres,
    narrow at the crown and widest in the body; debris flows are narrow and long with a
    fan at the toe. When the slope below is too short, the crown moves up the slope; if it
    is still short, the body widens a little and the landslide ends up smaller.

    Returns:
        ``(polygon in map coordinates, length m, mean width m)``.
    """
    ps = grid.res
    length = math.sqrt(area * ratio / 0.75)
    width = length / ratio
    step = max(0.7 * ps, length / 30.0)
    lateral = rng.normal(0.0, 0.15)
    stop = 8.0 if debris_flow else 18.0  # slides deposit at the toe, debris flows run on
    path, travelled = _trace(crown, length, step, S, lateral, stop)
    if travelled < 0.7 * length:
        up, climbed = _trace(crown, length - travelled, step, S, 0.0, 30.0, uphill=True)
        if climbed > 0:
            crown = up[-1]
            path, travelled = _trace(crown, length, step, S, lateral, stop)
    run = max(travelled, ps)
    if travelled < length and not debris_flow:  # stopped on gentle ground: spread sideways
        width = max(width, min(area / (0.75 * run), 0.7 * run))
    u = np.linspace(0.0, 1.0, len(path))
    if debris_flow:
        prof = np.where(u < 0.75, 0.45, 0.45 + 1.2 * (u - 0.75) / 0.25)
    else:
        prof = 0.55 + 0.5 * np.sin(np.pi * np.minimum(1.0, 0.15 + u))
    wig = 1.0 + 0.12 * smooth1d(len(path), rng, 2.0)
    radii = width / 2.0 * prof * wig
    geom = _outline(path, np.maximum(radii, 0.6 * ps), grid)
    # Widths follow from a shape model; correct them once so the area is the drawn one,
    # without making the landslide wider than ~0.7 times its length.
    k = min(area / max(geom.area, 1e-6), 0.7 * run / max(radii.max() * 2.0, 1e-6))
    if abs(math.log(max(k, 1e-6))) > math.log(1.2):
        radii = radii * min(max(k, 0.25), 1.5)
        geom = _outline(path, np.maximum(radii, 0.6 * ps), grid)
    return geom, float(travelled), float(2.0 * radii.mean())


def _visible_years(area: float, rng: np.random.Generator) -> float:
    """How long a landslide stays mostly bare: 1-2 years when small, 4-6 when huge."""
    return max(1.05, (1.0 + 0.9 * math.log10(max(area, 300.0) / 300.0)) * rng.uniform(0.75, 1.35))


def make_landslides(frame: Frame, S: Slopes, config: WorldConfig
                     ) -> tuple[list[Landslide], dict[int, int]]:
    """Every landslide of the world with its failures, for the years and a few before."""
    grid = frame.grid
    seed = config.seed
    area_km2 = (grid.width * grid.res / 1000.0) ** 2
    first, event = config.years[0], config.event_year
    all_years = list(range(first - LEGACY_YEARS, first)) + list(config.years)
    rng = stream(seed, "landslide-counts")
    counts: dict[int, int] = {}
    for y in all_years:
        if y == event:
            rate = EVENT_RATE
        elif y > event:
            rate = BACKGROUND_RATE * (1.0 + 1.5 * math.exp(-(y - event - 1) / 1.2))
        else:
            rate = BACKGROUND_RATE
        counts[y] = int(rng.poisson(rate * area_km2))
    total = sum(counts.values())
    # Areas: inverse-gamma, stratified (Latin hypercube) so the heavy tail is represented.
    rng = stream(seed, "landslide-areas")
    u = (rng.permutation(total) + rng.uniform(size=total)) / max(total, 1)
    from scipy import stats  # slow to import: only world generation needs it

    areas = np.minimum(stats.invgamma.isf(u, AREA_SHAPE, scale=AREA_SCALE), AREA_MAX)
    world_box = box(*grid.bounds)
    slides: list[Landslide] = []
    k = 0
    next_id = 1
    for y in all_years:
        rng = stream(seed, "landslide-sites", y)
        if y == event:
            weight = S.event_weight
        elif y > event:
            weight = 0.6 * S.bg_weight + 0.4 * S.event_weight
        else:
            weight = S.bg_weight
        sites = _sample_sites(weight, counts[y], rng)
        for r, c in sites:
            area = float(areas[k])
            k += 1
            ratio = float(np.clip(rng.lognormal(math.log(2.6), 0.35), 1.3, 7.0))
            debris = bool(rng.uniform() < 0.15)
            if debris:
                ratio *= 2.0
            crown = np.array([c + rng.uniform(), r + rng.uniform()])
            geom, length, width = _failure(crown, area, ratio, debris, S, grid, rng)
            geom = shapely.intersection(geom, world_box)
            if geom.is_empty or geom.area < 0.5 * grid.res ** 2:
                continue
            ls = Landslide(next_id, y, float(rng.uniform(0.1, 0.8)),
                            float(rng.uniform(0.9, 1.12)))
            ls.history.append(Disturbance(y, "new", geom, _visible_years(geom.area, rng),
                                           crown, length, width))
            slides.append(ls)
            next_id += 1
        if y > event:
            _reactivate(slides, y, S, grid, world_box, stream(seed, "reactivations", y), event)
    return slides, counts


def _reactivate(slides: list[Landslide], year: int, S: Slopes, grid: PixelGrid,
                world_box: object, rng: np.random.Generator, event: int) -> None:
    """Some landslides fail again: the crown retreats upslope and the scar grows."""
    for ls in slides:
        last = ls.state(year - 1)
        if last is None or ls.trigger_year >= year or year - last.year > last.visible_years + 3:
            continue
        p = REACTIVATION_P * (1.7 if ls.trigger_year == event else 1.0)
        if rng.uniform() >= p:
            continue
        r, c = int(last.crown[1]), int(last.crown[0])
        n = grid.width
        if not (0 <= r < n and 0 <= c < n):
            continue
        back = rng.uniform(0.15, 0.4) * last.length / grid.res
        crown = last.crown - S.down[:, r, c] * back
        area = last.geometry.area * rng.uniform(1.2, 1.6)
        geom, length, width = _failure(crown, area, max(1.3, last.length / max(last.width, 1.0)),
                                       False, S, grid, rng)
        geom = shapely.intersection(shapely.union(geom, last.geometry), world_box)
        if geom.is_empty:
            continue
        ls.history.append(Disturbance(year, "reactivated", geom,
                                       _visible_years(geom.area, rng), crown, length, width))


def inventory_rows(slides: list[Landslide], year: int) -> list[dict]:
    """The landslides visible in ``year`` (not yet more than half revegetated)."""
    rows = []
    for ls in slides:
        d = ls.state(year)
        if d is None or year - d.year >= d.visible_years:
            continue
        if d.year == year:
            status = "new" if d.kind == "new" else "reactivated"
        else:
            status = "active"
        rows.append({"id": ls.lid, "trigger_year": ls.trigger_year, "status": status,
                     "area_m2": float(d.geometry.area), "geometry": d.geometry})
    return rows


def recovery(d: Disturbance, year: int) -> float:
    """How far failure ``d`` has revegetated in ``year``.

    0 in its own year, 0.5 after ``d.visible_years`` (when it leaves the inventories), then
    towards 1: ``1 - 2 ** (-(year - d.year) / d.visible_years)``.
    """
    return 1.0 - 2.0 ** (-(year - d.year) / d.visible_years)


def drawn_failures(slides: list[Landslide], year: int
                   ) -> list[tuple[Landslide, Disturbance, float]]:
    """The scars drawn in ``year``'s image, bottom to top, with their recovery.

    Each landslide's latest failure at or before ``year`` while its recovery is below
    :data:`DRAWN_MAX_RECOVERY`, sorted by (failure year, landslide id): where scars
    overlap, the most recent failure is drawn on top.
    """
    states = []
    for ls in slides:
        d = ls.state(year)
        if d is None:
            continue
        rec = recovery(d, year)
        if rec < DRAWN_MAX_RECOVERY:
            states.append((ls, d, rec))
    states.sort(key=lambda s: (s[1].year, s[0].lid))
    return states


def scar_raster(slides: list[Landslide], year: int, grid: PixelGrid
                ) -> tuple[np.ndarray, list[tuple[Landslide, Disturbance, float]]]:
    """Which scar the image of ``year`` draws at every pixel of ``grid``.

    Args:
        slides: Every landslide of the world (:func:`make_landslides`).
        year: The year.
        grid: Where to rasterize (pixel centres); only its shape and affine transform are
            used.

    Returns:
        ``(labels, states)``: int32 labels of ``grid.shape``, ``i + 1`` where
        ``states[i]`` (:func:`drawn_failures`, the most recent failure on top) is drawn,
        0 where no scar is.
    """
    states = drawn_failures(slides, year)
    if not states:
        return np.zeros(grid.shape, dtype=np.int32), states
    shapes = [(d.geometry, i + 1) for i, (_, d, _) in enumerate(states)]
    labels = features.rasterize(shapes, out_shape=grid.shape, transform=grid.affine,
                                fill=0, dtype="int32")
    return labels, states


def recovery_raster(slides: list[Landslide], year: int, grid: PixelGrid) -> np.ndarray:
    """The recovery of the scar under every pixel of ``grid`` in ``year``.

    Pixels are rasterized as the images draw the scars (pixel centres, the most recent
    failure on top, no scar once its recovery reaches :data:`DRAWN_MAX_RECOVERY`), so a
    pixel is in ``year``'s inventory exactly where its value is below 0.5 (unless a newer
    scar not in the inventory covers it). ``grid`` may be any grid in the world's CRS
    (the world's own, or a sweep's mosaic).

    Args:
        slides: Every landslide of the world (:func:`make_landslides`).
        year: The year.
        grid: Where to rasterize; only its shape and affine transform are used.

    Returns:
        float32 array of ``grid.shape``: 0 for a failure of ``year`` itself, rising towards
        1 as it revegetates; NaN where no scar is drawn.
    """
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    lab, states = scar_raster(slides, year, grid)
    if not states:
        return out
    rec = np.array([s[2] for s in states], dtype=np.float64)
    # Round down to float32, so that rec < 0.5 (< any float32 bound) keeps its float64 truth.
    rec32 = rec.astype(np.float32)
    up = rec32.astype(np.float64) > rec
    rec32[up] = np.nextafter(rec32[up], np.float32(0.0))
    inside = lab > 0
    out[inside] = rec32[lab[inside] - 1]
    return out
