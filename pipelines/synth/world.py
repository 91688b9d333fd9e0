"""Generate a whole world into a folder: :func:`generate_world` and ``landslides synth``.

:func:`world_landslides` regenerates the landslides of a world folder (with every failure
and its recovery time, which the inventories do not hold).

Builds the terrain, the land cover and every landslide once, then renders one image and
one inventory per year, and writes the DEM, land cover, areas and ``world.json`` (see
:mod:`pipelines.synth` for what each file holds).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from shapely.geometry import box

from model.cpu import describe_numpy_kernels, numpy_kernels
from pipelines import fsio
from pipelines.geo.bands import SENTINEL2_BANDS, TERRAIN_BANDS
from pipelines.geo.cog import CATEGORICAL, CogProfile, write_cog
from pipelines.geo.grid import WGS84, PixelGrid
from pipelines.synth.clouds import CLOUD_LEGEND
from pipelines.synth.config import WorldConfig
from pipelines.synth.frame import Frame, world_grid
from pipelines.synth.imagery import DN_SCALE, render_year
from pipelines.synth.landcover import LANDCOVER, Land, make_landcover
from pipelines.synth.landslides import (
    STATUSES,
    Landslide,
    inventory_rows,
    make_landslides,
    make_slopes,
)
from pipelines.synth.layout import FILES, clouds_name, inventory_name, s2_name
from pipelines.synth.spectra import make_textures
from pipelines.synth.terrain import Terrain, make_terrain

if TYPE_CHECKING:
    from pipelines.options.synth import SynthOptions

log = logging.getLogger(__name__)

#: Version of the generator, in ``world.json`` and in every file's tags.
GENERATOR_VERSION = "1.0.0"
#: Nodata of ``dem.tif``.
DEM_NODATA = -32768.0
#: Share of the world (its western part) set aside for training.
TRAIN_FRACTION = 0.4
#: Gap (pixels) between the training and study areas, so no patch with its halo spans both.
AREA_GAP_PX = 32
#: COG options: fast deflate for the big imagery, predictors for better compression.
_DN_COG = CogProfile(predictor=2)
_FLOAT_COG = CogProfile(predictor=3)
#: What :func:`generate_world` generates when given no configuration.
_DEFAULT_CONFIG = WorldConfig()


def _inventory_frame(rows: list[dict], crs: str):
    import geopandas as gpd
    import pandas as pd

    rows = sorted(rows, key=lambda r: r["id"])
    data = pd.DataFrame({
        "id": pd.Series([r["id"] for r in rows], dtype="int64"),
        "trigger_year": pd.Series([r["trigger_year"] for r in rows], dtype="int64"),
        "status": pd.Series([r["status"] for r in rows], dtype="object"),
        "area_m2": pd.Series([round(r["area_m2"], 2) for r in rows], dtype="float64"),
    })
    geoms = gpd.GeoSeries([r["geometry"] for r in rows], crs=crs)
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def _write_areas(out: str, grid: PixelGrid) -> dict:
    """The AOI, training and study areas as WGS 84 GeoJSON polygons."""
    import geopandas as gpd

    from pipelines.geo.inventory import write_inventory

    left, bottom, right, top = grid.bounds
    split = left + round(TRAIN_FRACTION * grid.width) * grid.res
    gap = min(AREA_GAP_PX * grid.res, 0.05 * (right - left))
    parts = {
        "aoi": box(left, bottom, right, top),
        "train_area": box(left, bottom, split - gap / 2.0, top),
        "study_area": box(split + gap / 2.0, bottom, right, top),
    }
    bounds = {}
    for name, geom in parts.items():
        g = gpd.GeoDataFrame({"name": [name]},
                             geometry=[shapely.segmentize(geom, 100.0)], crs=grid.crs)
        g = g.to_crs(WGS84)
        write_inventory(g, fsio.join(out, FILES[name]))
        bounds[name] = [round(v, 7) for v in g.total_bounds]
    return bounds


def _landscape(config: WorldConfig) -> tuple[Frame, Terrain, Land, list[Landslide]]:
    """The frame, terrain, land cover and every landslide of ``config``'s world."""
    grid = world_grid(config)
    ps = float(config.pixel_size)
    frame = Frame(grid, max(8, round(160.0 / ps)), ps)
    T = make_terrain(frame, config.seed)
    land = make_landcover(frame, T, config.seed)
    S = make_slopes(frame, T, land)
    slides, _ = make_landslides(frame, S, config)
    return frame, T, land, slides


def landslides_fingerprint(slides: list[Landslide]) -> str:
    """A hash of every landslide, failure by failure, to the last bit of its outline.

    The same seed regenerates the same landslides only where numpy's transcendental
    kernels are the same (:func:`model.cpu.numpy_kernels`: AVX512 and AVX2 ones differ in
    the last bit, and a trace's step on the other side of a pixel edge moves everything
    after it), so :func:`world_landslides` compares this, not only their number.
    """
    h = hashlib.sha256()
    for ls in slides:
        h.update(f"{ls.lid} {ls.trigger_year} {ls.rockiness!r} {ls.redness!r}".encode())
        for d in ls.history:
            h.update(f"{d.year} {d.kind} {d.visible_years!r} ".encode())
            h.update(shapely.to_wkb(d.geometry))
    return h.hexdigest()[:16]


def world_landslides(world_dir: str) -> tuple[list[Landslide], PixelGrid]:
    """Every landslide of an existing world folder, regenerated from its ``world.json``.

    The landslides are not stored, only their yearly inventories; this rebuilds them (with
    every failure, its year and recovery time) from the configuration in ``world.json``,
    as :func:`generate_world` built them: the terrain and land cover are regenerated too,
    the images are not (seconds, not minutes). They are checked against the fingerprint
    ``world.json`` records (:func:`landslides_fingerprint`), so a world generated where
    numpy computes differently is refused, not described by other landslides.

    Args:
        world_dir: The world folder (local or ``gs://``).

    Returns:
        The landslides and the world's pixel grid.

    Raises:
        DataNotFoundError: ``world_dir`` holds no ``world.json``.
        InputError: the world was written by another version of the generator, or its
            landslides do not regenerate as recorded (their count, grid or fingerprint
            differ: e.g. it was generated on a machine whose numpy kernels differ).
    """
    from pipelines.errors import DataNotFoundError, InputError

    path = fsio.join(world_dir, FILES["world"])
    if not fsio.exists(path):
        raise DataNotFoundError(f"{path} not found: {world_dir!r} is not a synthetic world "
                                f"folder (`landslides synth --out ...` writes one).")
    meta = fsio.read_json(path)
    version = meta.get("generator_version")
    if version != GENERATOR_VERSION:
        raise InputError(f"{world_dir} was generated by version {version} of the generator, "
                         f"this is {GENERATOR_VERSION}: its landslides cannot be regenerated.")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in meta["config"].items()}
    config = WorldConfig(**fields)
    frame, _, _, slides = _landscape(config)
    grid = frame.grid
    if len(slides) != meta.get("landslides_total") \
            or list(grid.transform) != list(meta.get("transform", [])):
        raise InputError(f"{world_dir}: the regenerated world has {len(slides)} landslides on "
                         f"{list(grid.transform)}, world.json records "
                         f"{meta.get('landslides_total')} on {meta.get('transform')}.")
    recorded = meta.get("landslides_fingerprint")  # absent in worlds written before it
    regenerated = landslides_fingerprint(slides) if recorded is not None else None
    if regenerated != recorded:
        then = meta.get("numpy_kernels")
        raise InputError(
            f"{world_dir}: its landslides do not regenerate as generated (fingerprint "
            f"{regenerated}, world.json records {recorded}). numpy's "
            f"transcendental functions differ in their last bits between CPU targets: the "
            f"world was generated with numpy kernels "
            f"{describe_numpy_kernels(then) if then else 'not recorded'}, this machine "
            f"runs {describe_numpy_kernels()}. Generate the world on this machine "
            f"(`landslides synth`, or rerun the study), or read it where it was generated.")
    return slides, grid


def generate_world(out: str, config: WorldConfig = _DEFAULT_CONFIG) -> dict:
    """Generate the synthetic world into ``out`` (local folder or ``gs://`` prefix).

    Args:
        out: Output folder.
        config: What to generate.

    Returns:
        The content written to ``world.json``.

    Raises:
        ConfigError: an invalid configuration.
        OutputError: ``out`` cannot be written.
    """
    from pipelines.geo.inventory import write_inventory

    t0 = time.monotonic()
    fsio.makedirs(out)
    grid = world_grid(config)
    ps = float(config.pixel_size)
    log.info("Synthetic world: %d x %d px at %g m (%s), years %d-%d, event %d, seed %d.",
             grid.width, grid.height, ps, grid.crs, config.years[0], config.years[-1],
             config.event_year, config.seed)
    frame, T, land, slides = _landscape(config)
    fingerprint = landslides_fingerprint(slides)
    dem = frame.crop(T.dem).astype(np.float32)
    tex = make_textures(grid.shape, ps, config.seed)
    log.info("Terrain, land cover and %d landslides in %.1f s.", len(slides),
             time.monotonic() - t0)

    tags = {"generator": f"landslide-mapper synthetic {GENERATOR_VERSION}",
            "seed": str(config.seed)}
    write_cog(fsio.join(out, FILES["dem"]), dem, grid, nodata=DEM_NODATA, band_names=["DEM"],
              profile=_FLOAT_COG, tags={**tags, "units": "m"})
    write_cog(fsio.join(out, FILES["landcover"]), land.lc, grid, nodata=0,
              band_names=["landcover"], profile=CATEGORICAL,
              tags={**tags, "legend": ",".join(f"{k}={v}" for k, v in LANDCOVER.items())})
    per_year: dict[str, dict] = {}
    images: dict[str, dict] = {}
    for i, year in enumerate(config.years):
        ty = time.monotonic()
        dn, mask, meta = render_year(year, config, frame, T, land, slides, tex)
        write_cog(fsio.join(out, s2_name(year)), dn, grid, nodata=0,
                  band_names=list(SENTINEL2_BANDS), profile=_DN_COG,
                  tags={**tags, "date": meta["date"], "scale": repr(1.0 / DN_SCALE),
                        "product": "synthetic Sentinel-2 L2A surface reflectance"})
        write_cog(fsio.join(out, clouds_name(year)), mask, grid, nodata=None,
                  band_names=["clouds"], profile=CATEGORICAL,
                  tags={**tags, "legend": CLOUD_LEGEND})
        rows = inventory_rows(slides, year)
        write_inventory(_inventory_frame(rows, grid.crs), fsio.join(out, inventory_name(year)))
        stats_y = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        per_year[str(year)] = {
            **stats_y,
            "visible": len(rows),
            "total_area_m2": round(sum(r["area_m2"] for r in rows), 1),
            "new_area_m2": round(sum(r["area_m2"] for r in rows if r["status"] == "new"), 1),
            "max_area_m2": round(max((r["area_m2"] for r in rows), default=0.0), 1),
        }
        images[str(year)] = meta
        el = time.monotonic() - t0
        log.info("Year %d: %d landslides visible (%d new), clouds %.0f%% - %.1f s "
                 "(%d/%d, ETA %.0f s).", year, len(rows), stats_y["new"],
                 100 * meta["cloud_fraction"], time.monotonic() - ty, i + 1, len(config.years),
                 el / (i + 1) * (len(config.years) - i - 1))
    area_bounds = _write_areas(out, grid)
    counts = np.bincount(land.lc.ravel(), minlength=len(LANDCOVER) + 1)
    world = {
        "generator": "landslide-mapper synthetic world",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "crs": grid.crs,
        "transform": list(grid.transform),
        "shape": [grid.height, grid.width],
        "width": grid.width,
        "height": grid.height,
        "pixel_size": ps,
        "bounds": list(grid.bounds),
        "bounds_wgs84": area_bounds,
        "years": list(config.years),
        "event_year": config.event_year,
        "bands": list(SENTINEL2_BANDS),
        "terrain_bands": list(TERRAIN_BANDS),
        "dn_scale": 1.0 / DN_SCALE,
        "nodata": 0,
        "dem_range_m": [round(float(dem.min()), 1), round(float(dem.max()), 1)],
        "landcover_legend": {str(k): v for k, v in LANDCOVER.items()},
        "landcover_fractions": {v: round(float(counts[k]) / land.lc.size, 4)
                                for k, v in LANDCOVER.items()},
        "landslides": per_year,
        "landslides_total": len(slides),
        # what world_landslides checks a regeneration against, and what decides it
        "landslides_fingerprint": fingerprint,
        "numpy_kernels": numpy_kernels(),
        "images": images,
        "files": {
            **{k: v for k, v in FILES.items()},
            "s2": {str(y): s2_name(y) for y in config.years},
            "clouds": {str(y): clouds_name(y) for y in config.years},
            "inventory": {str(y): inventory_name(y) for y in config.years},
        },
    }
    fsio.write_json(fsio.join(out, FILES["world"]), world)
    log.info("Synthetic world written to %s in %.1f s.", out, time.monotonic() - t0)
    return world


def synth_command(options: SynthOptions) -> int:
    """``landslides synth``: generate the world and log its landslides per year."""
    world = generate_world(options.out, options.config)
    for year, c in world["landslides"].items():
        log.info("%s: %d visible landslides (%d new, %d active, %d reactivated), %.0f m2.",
                 year, c["visible"], c["new"], c["active"], c["reactivated"],
                 c["total_area_m2"])
    return 0
