"""Vectorizing masks: :func:`vectorize` turns a predicted class mask into polygons.

One polygon per connected region of one class, with its true area, pixel count and (given
a probability raster) probability statistics: the rows of the sweep's vector inventory.
:func:`polygonize` returns the same columns as plain arrays, for callers that handle
many small masks (a sweep's chunks) and need no GeoDataFrame.
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import shapely
from scipy import ndimage

from pipelines.errors import InputError
from pipelines.geo.grid import PixelGrid
from pipelines.geo.inventory.geometry import areas_m2, polygonal

logger = logging.getLogger(__name__)

__all__ = ["VECTOR_COLUMNS", "polygonize", "vectorize"]

#: Columns of :func:`vectorize`'s output (the ``prob_*`` ones only with a probability).
VECTOR_COLUMNS = ("value", "area_m2", "n_pixels", "prob_mean", "prob_max")


def _empty_columns(with_prob: bool) -> dict[str, np.ndarray]:
    cols = {"geometry": np.empty(0, dtype=object), "value": np.zeros(0, dtype="int64"),
            "area_m2": np.zeros(0), "n_pixels": np.zeros(0, dtype="int64")}
    if with_prob:
        cols.update(prob_mean=np.zeros(0), prob_max=np.zeros(0))
    return cols


def _check_shape(name: str, arr: np.ndarray, grid: PixelGrid) -> None:
    if arr.shape != grid.shape:
        raise InputError(
            f"{name} has shape {arr.shape} but the grid is {grid.shape} (height, width): "
            f"pass arrays on the same grid."
        )


def vectorize(
    mask: np.ndarray,
    grid: PixelGrid,
    min_area_m2: float = 200.0,
    probability: np.ndarray | None = None,
    connectivity: int = 4,
    valid: np.ndarray | None = None,
) -> gpd.GeoDataFrame:
    """Turn a class mask into polygons, one per connected region of one class.

    Connected regions are found with ``scipy.ndimage.label`` (per class value) and
    polygonized with ``rasterio.features.shapes`` on the label image, so each polygon's
    pixel count and probability statistics come from the very pixels it outlines.

    Args:
        mask: ``(h, w)`` class mask; values > 0 are landslide classes (bool is class 1).
        grid: The mask's pixel grid.
        min_area_m2: Drop polygons smaller than this (true area, see :func:`area_m2`).
        probability: Optional ``(h, w)`` probabilities; adds ``prob_mean`` and ``prob_max``
            per polygon (NaN pixels are ignored).
        connectivity: 4 (edges) or 8 (edges and corners) pixel connectivity.
        valid: Optional ``(h, w)`` bool array; pixels where it is False belong to no polygon.

    Returns:
        Columns ``geometry, value, area_m2, n_pixels`` (and ``prob_mean, prob_max``) in
        ``grid.crs``, ordered by class value, then by the raster scan order of each
        polygon's first pixel. With ``connectivity=8`` a region joined only through pixel
        corners is one MultiPolygon whose parts touch at those corners (valid geometry).

    Raises:
        InputError: arrays not on the grid, non-integer class values, bad connectivity.
    """
    cols = polygonize(mask, grid, min_area_m2, probability, connectivity, valid)
    geoms = cols.pop("geometry")  # typed empty arrays when no polygon is left
    return gpd.GeoDataFrame({"geometry": gpd.GeoSeries(geoms, crs=grid.crs), **cols},
                            crs=grid.crs)


def polygonize(
    mask: np.ndarray,
    grid: PixelGrid,
    min_area_m2: float = 200.0,
    probability: np.ndarray | None = None,
    connectivity: int = 4,
    valid: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """:func:`vectorize`'s columns as arrays (``geometry``: shapely objects), no GeoDataFrame.

    Same arguments, order and errors as :func:`vectorize`; every array is empty when no
    polygon is left.
    """
    from rasterio.features import shapes

    if connectivity not in (4, 8):
        raise InputError(f"connectivity must be 4 or 8, got {connectivity!r}.")
    mask = np.asarray(mask)
    _check_shape("mask", mask, grid)
    if mask.dtype == bool:
        classes_img = mask.astype("int32")
    else:
        if not np.issubdtype(mask.dtype, np.number):
            raise InputError(f"mask must be numeric or bool, got dtype {mask.dtype}.")
        m = np.where(np.isfinite(mask), mask, 0) if mask.dtype.kind == "f" else mask
        if mask.dtype.kind == "f" and np.any(m != np.round(m)):
            raise InputError(
                "mask holds fractional values: it must hold class numbers. Threshold "
                "probabilities first (e.g. mask = probability >= 0.5)."
            )
        if m.size and (m.max() > np.iinfo("int32").max):
            raise InputError(f"mask values up to {m.max()} do not fit int32 class numbers.")
        classes_img = np.where(m > 0, m, 0).astype("int32")
    if valid is not None:
        valid = np.asarray(valid)
        _check_shape("valid", valid, grid)
        classes_img[~valid.astype(bool)] = 0
    if probability is not None:
        probability = np.asarray(probability, dtype="float64")
        _check_shape("probability", probability, grid)

    # One label per connected region of one class value.
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(classes_img.shape, dtype="int32")
    label_class: list[np.ndarray] = [np.zeros(1, dtype="int64")]
    n_labels = 0
    for value in np.unique(classes_img[classes_img > 0]):
        lab, n = ndimage.label(classes_img == value, structure=structure)
        sel = lab > 0
        labels[sel] = lab[sel] + n_labels
        label_class.append(np.full(n, int(value), dtype="int64"))
        n_labels += n
    if n_labels == 0:
        return _empty_columns(probability is not None)
    cls_of = np.concatenate(label_class)

    # Polygonize the label image with 4-connectivity: GDAL's 8-connected rings touch
    # themselves at pixel corners (invalid, and very slow to repair on noisy masks), so a
    # region joined through corners becomes a MultiPolygon of its 4-connected pieces,
    # which touch only at points (valid).
    pieces, piece_ids = [], []
    for geom, lab_id in shapes(labels, mask=labels > 0, connectivity=4, transform=grid.affine):
        pieces.append(shapely.geometry.shape(geom))
        piece_ids.append(int(lab_id))
    piece_arr = np.empty(len(pieces), dtype=object)
    piece_arr[:] = pieces
    piece_lab = np.asarray(piece_ids, dtype="int64")
    order = np.argsort(piece_lab, kind="stable")
    piece_arr, piece_lab = piece_arr[order], piece_lab[order]
    ids_arr, first, counts = np.unique(piece_lab, return_index=True, return_counts=True)
    geoms = piece_arr[first].copy()
    multi = counts > 1
    if multi.any():
        sel = np.isin(piece_lab, ids_arr[multi])
        group = np.searchsorted(ids_arr[multi], piece_lab[sel])
        geoms[multi] = shapely.multipolygons(piece_arr[sel], indices=group)
    bad = ~shapely.is_valid(geoms)
    if bad.any():  # not expected from pixel outlines; repaired rather than passed on
        logger.warning("repairing %d invalid polygons from polygonize", int(bad.sum()))
        geoms[bad] = polygonal(shapely.make_valid(geoms[bad]))

    flat = labels.ravel()
    n_pix = np.bincount(flat, minlength=n_labels + 1)
    area = areas_m2(geoms, grid.crs)
    data: dict[str, np.ndarray] = {  # in VECTOR_COLUMNS' order, after the geometry
        "geometry": geoms,
        "value": cls_of[ids_arr],
        "area_m2": area,
        "n_pixels": n_pix[ids_arr].astype("int64"),
    }
    if probability is not None:
        p = probability.ravel()
        finite = np.isfinite(p)
        cnt = np.bincount(flat[finite], minlength=n_labels + 1)
        tot = np.bincount(flat[finite], weights=p[finite], minlength=n_labels + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
        # over the labelled pixels only (ndimage.maximum sorts the whole image's labels)
        inside = finite & (flat > 0)
        pmax = np.full(n_labels + 1, -np.inf)
        np.maximum.at(pmax, flat[inside], p[inside])
        pmax[~np.isfinite(pmax)] = np.nan
        data["prob_mean"] = mean[ids_arr]
        data["prob_max"] = pmax[ids_arr]
    keep = area >= float(min_area_m2)
    return {name: column[keep] for name, column in data.items()}
