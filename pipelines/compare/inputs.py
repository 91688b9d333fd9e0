"""The inputs of a comparison: which files each side of each year names, read into one CRS.

Resolves a path template (``{year}``, globs of chunk COGs) to files, reads each side in
its own CRS, chooses the projected CRS to compare in, reprojects, clips to the AOI and
filters each side (:class:`Side`), and limits a reference to what a raster prediction
could observe.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely
from shapely.geometry import box

from pipelines import fsio
from pipelines.compare.config import CompareConfig
from pipelines.compare.layers import Layer, RasterMask, VectorMask, _crs_label
from pipelines.errors import DataNotFoundError, InputError, RegionError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.grid import WGS84, Region, is_metric_crs, to_crs, utm_epsg
from pipelines.geo.inventory import area_m2, read_inventory

logger = logging.getLogger(__name__)

#: Extensions read as rasters (everything else is read as a vector inventory).
RASTER_EXTS = (".tif", ".tiff", ".vrt", ".img", ".jp2")
#: Roles of the two inputs.
SIDES = ("reference", "predicted")


def _is_raster_path(path: str) -> bool:
    return str(path).lower().endswith(RASTER_EXTS)


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


@dataclass(frozen=True)
class ResolvedInput:
    """One side of one year: the file(s) to read and how to read them."""

    role: str
    year: int | None
    template: str
    paths: tuple[str, ...]
    kind: str  # "vector" or "raster"

    @property
    def label(self) -> str:
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{self.template} ({len(self.paths)} files)"


def resolve_input(template: str, year: int | None, role: str = "reference") -> ResolvedInput:
    """Fill ``{year}`` in ``template`` and find the file(s) it names.

    Raises:
        DataNotFoundError: no such file (the message names the template and the year).
        InputError: a glob that matches vector files (globs are for chunk COGs only).
    """
    path = template.replace("{year}", str(year)) if year is not None else template
    at = f" ({role} template {template!r}, year {year})" if "{year}" in template else ""
    if _has_glob(path):
        paths = fsio.glob(path)
        if not paths:
            raise DataNotFoundError(f"No file matches {path!r}{at}. Check the path and the "
                                    f"year; a sweep writes its chunk masks as .../mask/*.tif.")
        not_raster = [p for p in paths if not _is_raster_path(p)]
        if not_raster:
            raise InputError(
                f"The glob {path!r} matches non-raster files ({not_raster[:3]}): globs are for "
                f"chunk mask COGs (*.tif); give a vector inventory as one file."
            )
        return ResolvedInput(role, year, template, tuple(paths), "raster")
    if not fsio.exists(path):
        raise DataNotFoundError(
            f"{role.capitalize()} {path!r} does not exist{at}. Check the path (vector file, "
            f"mask COG, VRT mosaic, or a glob of chunk COGs)."
        )
    return ResolvedInput(role, year, template, (path,),
                         "raster" if _is_raster_path(path) else "vector")


@dataclass
class Side:
    """One inventory of one year, in the common CRS, clipped to the AOI."""

    role: str
    year: int | None
    source: ResolvedInput
    gdf: gpd.GeoDataFrame
    layer: Layer
    report: dict
    bounds: tuple[float, float, float, float] | None
    #: Reference only, with observed-only scoring: the landslides left out as unobserved.
    unobserved: gpd.GeoDataFrame | None = None


def _native(res: ResolvedInput, stack: contextlib.ExitStack) -> tuple[object, str, dict]:
    """Read a side in its own CRS: (GeoDataFrame or raster files, crs label, report)."""
    if res.kind == "vector":
        gdf = read_inventory(res.paths[0])
        rep = gdf.attrs["report"].to_dict()
        return gdf, _crs_label(gdf.crs), {"kind": "vector", **rep}
    files = RasterMask.open(res.paths, stack)
    crss = sorted({f.crs for f in files})
    return files, crss[0], {"kind": "raster", "path": res.label, "n_files": len(files),
                            "crs": crss}


def _choose_crs(config: CompareConfig, natives: dict, region: Region | None) -> tuple[str, str]:
    """The projected CRS (in metres) to compare in, and why it was chosen.

    ``--epsg`` if given; else the reference's CRS (first year) if projected in metres; else
    the UTM zone of the AOI centroid; else the prediction's CRS if projected in metres; else
    the UTM zone of the data's centre.
    """
    if config.epsg:
        return f"EPSG:{int(config.epsg)}", "given with --epsg"
    ordered = sorted(natives.items(), key=lambda kv: (kv[0][1] or 0, SIDES.index(kv[0][0])))
    for role in SIDES:
        if role == "predicted" and region is not None:
            break
        for (r, _), (_, crs, _) in ordered:
            if r == role:
                if is_metric_crs(crs):
                    return crs, f"the {role} inventory's CRS"
                break
        if role == "reference" and region is not None:
            c = region.geometry.centroid
            return f"EPSG:{utm_epsg(c.x, c.y)}", "the UTM zone of the AOI centroid"
    for _, (obj, crs, _) in ordered:
        if isinstance(obj, gpd.GeoDataFrame) and len(obj):
            b = tuple(obj.total_bounds)
        elif isinstance(obj, list) and obj:
            b = obj[0].grid.bounds
        else:
            continue
        lon, lat = to_crs(box(*b), crs, WGS84).centroid.coords[0]
        return f"EPSG:{utm_epsg(lon, lat)}", "the UTM zone of the data's centre"
    return "EPSG:3857", "no data to choose from"


def _to_common(role: str, year: int | None, res: ResolvedInput, native: object,
               native_crs: str, report: dict, crs: str, aoi: shapely.Geometry | None,
               config: CompareConfig) -> Side:
    """Reproject, clip to the AOI and filter one side; RegionError if it misses the AOI."""
    if native_crs != crs:
        logger.info("reprojecting %s %s from %s to %s", role, res.label, native_crs, crs)
        report["reprojected_from"] = native_crs
    if isinstance(native, gpd.GeoDataFrame):
        gdf = native.to_crs(crs) if native_crs != crs else native
        bounds = tuple(gdf.total_bounds) if len(gdf) else None
        if aoi is not None and bounds is not None and not aoi.intersects(box(*bounds)):
            raise RegionError(
                f"The area of interest does not intersect the {role} inventory {res.label!r} "
                f"(its extent {tuple(round(v) for v in bounds)} in {crs}): check --aoi, or "
                f"the inventory's year and CRS."
            )
        layer_gdf = gdf
    else:
        files = native  # list[RasterFile]
        rm = RasterMask(files, crs)  # type: ignore[arg-type]
        bounds = rm.bounds
        if aoi is not None and not aoi.intersects(box(*bounds)):
            raise RegionError(
                f"The area of interest does not intersect the {role} raster {res.label!r} "
                f"(its extent {tuple(round(v) for v in bounds)} in {crs}): check --aoi."
            )
        gdf = rm.vectorize(aoi, config.tile_size, config.connectivity)
        report["n_vectorised"] = len(gdf)
        layer_gdf = None
    geom_col = gdf.geometry.name
    if aoi is not None and len(gdf):
        gdf = gpd.clip(gdf, aoi, keep_geom_type=True).reset_index(drop=True)
        report["n_in_aoi"] = len(gdf)
    gdf = gdf.reset_index(drop=True)
    gdf["area_m2"] = area_m2(gdf).to_numpy() if len(gdf) else np.zeros(0)
    if config.min_area > 0 and len(gdf):
        small = gdf["area_m2"] < config.min_area
        report["n_below_min_area"] = int(small.sum())
        gdf = gdf[~small].reset_index(drop=True)
    report["n_compared"] = len(gdf)
    gdf = gdf.set_geometry(geom_col)
    if layer_gdf is not None:  # vectors are burnt as compared (clipped, filtered)
        layer: Layer = VectorMask(gdf)
        bounds = tuple(gdf.total_bounds) if len(gdf) else None
    elif report.get("n_below_min_area"):  # the pixels of the polygons dropped go too
        layer = rm.keeping(gdf)
    else:
        layer = rm
    return Side(role, year, res, gdf, layer, report, bounds)


def _union_bounds(bounds: list[tuple[float, float, float, float] | None]
                  ) -> tuple[float, float, float, float] | None:
    b = [v for v in bounds if v is not None]
    if not b:
        return None
    a = np.asarray(b)
    return (a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max())


#: Share of a reference landslide's area that must be observed for it to be scored.
OBSERVED_SHARE = 0.5


def _observed_references(sides: dict, years: Sequence[int | None], aoi: shapely.Geometry | None,
                         config: CompareConfig) -> dict[int | None, Side]:
    """Per year with a raster prediction: the reference limited to observed landslides.

    Returns ``{year: reference side with only landslides >= OBSERVED_SHARE inside the
    prediction's valid pixels}``; its report's ``n_unobserved`` counts those left out.
    """
    out: dict[int | None, Side] = {}
    for year in years:
        ref, pred = sides.get(("reference", year)), sides.get(("predicted", year))
        if ref is None or pred is None or not isinstance(pred.layer, RasterMask) \
                or not len(ref.gdf):
            continue
        keep = observed_share(ref.gdf, pred.layer, aoi, config) >= OBSERVED_SHARE
        gdf = ref.gdf[keep].reset_index(drop=True)
        report = {**ref.report, "n_unobserved": int((~keep).sum())}
        out[year] = Side(ref.role, ref.year, ref.source, gdf, VectorMask(gdf), report,
                         tuple(gdf.total_bounds) if len(gdf) else None,
                         unobserved=ref.gdf[~keep].reset_index(drop=True))
    return out


def observed_share(gdf: gpd.GeoDataFrame, raster: RasterMask, aoi: shapely.Geometry | None,
                   config: CompareConfig) -> np.ndarray:
    """The share of each polygon of ``gdf`` (same CRS) inside the valid pixels of ``raster``."""
    seen = raster.vectorize(aoi, config.tile_size, config.connectivity, valid=True)
    geoms = gdf.geometry.to_numpy()
    if not len(seen):
        return np.zeros(len(geoms))
    observed = shapely.union_all(seen.geometry.to_numpy())
    shapely.prepare(observed)
    inter = shapely.area(shapely.intersection(geoms, observed))
    return inter / np.maximum(shapely.area(geoms), 1e-9)


def predictions_on_unlabelled(sides: dict, years: Sequence[int | None],
                              aoi: shapely.Geometry | None, config: CompareConfig
                              ) -> dict[int | None, np.ndarray]:
    """Per year with a raster reference: which predicted polygons lie mostly off its labels.

    A label raster marks unlabelled (ignore) and unobserved pixels as no data; the pixel
    metrics never score them, and a predicted landslide at least half on them is neither a
    correct detection nor a false alarm either (the rule :func:`_observed_references`
    applies to reference landslides under a raster prediction's no data).

    Returns:
        ``{year: boolean array over the predicted polygons, True where left out}``.
    """
    out: dict[int | None, np.ndarray] = {}
    for year in years:
        ref, pred = sides.get(("reference", year)), sides.get(("predicted", year))
        if ref is None or pred is None or not isinstance(ref.layer, RasterMask) \
                or not len(pred.gdf):
            continue
        out[year] = observed_share(pred.gdf, ref.layer, aoi, config) < OBSERVED_SHARE
    return out


def predictions_on_unobserved(predicted: gpd.GeoDataFrame, observed: gpd.GeoDataFrame,
                              unobserved: gpd.GeoDataFrame, min_overlap: float,
                              criterion: str) -> np.ndarray:
    """Which predicted polygons lie on a reference landslide that is left out as unobserved.

    The rule mirrors the one for reference landslides: a landslide mostly under clouds is
    neither a hit nor a miss, so the visible piece of it the model found is neither a
    correct detection nor a false alarm, and it is not counted. A predicted polygon is left
    out when it would be *correct* against an unobserved reference landslide (same
    criterion and threshold as the object metrics) and is not correct against any observed
    one.

    Args:
        predicted: Predicted polygons.
        observed: The reference landslides that are scored.
        unobserved: The reference landslides left out as unobserved.
        min_overlap: The object metrics' threshold.
        criterion: ``"overlap"`` or ``"iou"``.

    Returns:
        A boolean array over ``predicted``: True where the polygon is left out.
    """
    drop = np.zeros(len(predicted), dtype=bool)
    if not len(predicted) or not len(unobserved):
        return drop
    key = "iou" if criterion == "iou" else "overlap_pred"

    def correct(ref: gpd.GeoDataFrame) -> np.ndarray:
        pairs = cm.match_objects(ref, predicted)
        return np.unique(pairs.loc[pairs[key] >= min_overlap, "pred"].to_numpy())

    drop[correct(unobserved)] = True
    drop[correct(observed)] = False
    return drop
