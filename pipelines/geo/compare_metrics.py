"""Metrics and statistics for comparing landslide inventories (pure functions, no I/O).

Everything here works on arrays and geometries already on a common grid or in a common
projected CRS; :mod:`pipelines.compare` reads the inputs and wires these together.

* **Pixel (area) metrics**: :class:`PixelCounts` accumulates true/false positives, misses
  and true negatives over any number of windows (``a + b`` merges two windows, so the
  whole-region answer never needs the whole region in memory) and turns them into
  precision, recall, F1 and IoU with areas in m2. A ratio with a zero denominator is
  reported as ``0.0`` (e.g. the precision of an empty prediction).
* **Object metrics**: :func:`match_objects` pairs reference and predicted polygons through a
  spatial index; :func:`object_metrics` counts found landslides, false alarms,
  fragmentation and merges.
* **Statistics**: :func:`inventory_stats` (count, areas, density per km2, the
  frequency-area distribution with its rollover and power-law tail exponent),
  :func:`fit_power_law` (Clauset, Shalizi & Newman 2009 continuous maximum-likelihood
  estimator), :func:`pearson` and :func:`multitemporal` (the table across years).
* **Density maps**: :func:`kde_density`, a binned Gaussian kernel density of landslide
  centroids in landslides per km2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage, stats

from pipelines.errors import InputError
from pipelines.geo.inventory import area_m2
from pipelines.geo.patches import IGNORE

#: Match criteria accepted by :func:`match_objects`.
CRITERIA = ("overlap", "iou")
#: Fewer landslides than this: no frequency-area fit (a note says why).
MIN_FAD_SAMPLES = 10
#: Fewer tail samples than this: no power-law exponent.
MIN_TAIL_SAMPLES = 5


def ratio(num: float, den: float) -> float:
    """``num / den``, or ``0.0`` when ``den`` is 0 (the convention for every metric here)."""
    return float(num) / float(den) if den else 0.0


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (``0.0`` when both are 0)."""
    return ratio(2.0 * precision * recall, precision + recall)


# --------------------------------------------------------------------------- pixel metrics
@dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of two binary masks over valid pixels, mergeable across windows.

    Attributes:
        tp: Pixels that are landslide in both (true positives).
        fp: Predicted landslide, not in the reference (false alarms).
        fn: Reference landslide, not predicted (misses).
        tn: Landslide in neither.
        pixel_area_m2: Area of one pixel in square metres.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    pixel_area_m2: float = 0.0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        if not isinstance(other, PixelCounts):
            return NotImplemented
        if self.pixel_area_m2 and other.pixel_area_m2 and not math.isclose(
                self.pixel_area_m2, other.pixel_area_m2, rel_tol=1e-9):
            raise InputError(
                f"Cannot add pixel counts of different pixel areas ({self.pixel_area_m2} "
                f"and {other.pixel_area_m2} m2): count every window on the same grid."
            )
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                           self.tn + other.tn, self.pixel_area_m2 or other.pixel_area_m2)

    @property
    def n_valid(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict:
        """Precision, recall, F1, IoU and the TP/FP/FN areas (m2), as a JSON-ready dict."""
        precision = ratio(self.tp, self.tp + self.fp)
        recall = ratio(self.tp, self.tp + self.fn)
        a = self.pixel_area_m2
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1_score(precision, recall),
            "iou": ratio(self.tp, self.tp + self.fp + self.fn),
            "tp_area_m2": self.tp * a,
            "fp_area_m2": self.fp * a,
            "fn_area_m2": self.fn * a,
            "reference_area_m2": (self.tp + self.fn) * a,
            "predicted_area_m2": (self.tp + self.fp) * a,
            "valid_area_m2": self.n_valid * a,
            **{f"{k}_px": v for k, v in asdict(self).items() if k != "pixel_area_m2"},
            "pixel_area_m2": a,
        }


def pixel_counts(reference: np.ndarray, predicted: np.ndarray, valid: np.ndarray | None = None,
                 pixel_area_m2: float = 1.0) -> PixelCounts:
    """Confusion counts of two landslide masks on the same grid.

    Args:
        reference: ``(h, w)`` mask, landslide where true (non-zero). In an integer label
            mask, :data:`~pipelines.geo.patches.IGNORE` (255) means "no label": such pixels
            are not counted, never taken as landslide.
        predicted: ``(h, w)`` mask on the same grid (255 in an integer mask: not counted).
        valid: Optional ``(h, w)`` bool; pixels where it is False (no data on either side,
            outside the area of interest) are not counted.
        pixel_area_m2: Area of one pixel.

    Returns:
        The :class:`PixelCounts` of this window.

    Raises:
        InputError: the arrays do not have the same shape.
    """
    ref_raw, pred_raw = np.asarray(reference), np.asarray(predicted)
    ref = ref_raw.astype(bool, copy=False)
    pred = pred_raw.astype(bool, copy=False)
    if ref.shape != pred.shape or (valid is not None and np.shape(valid) != ref.shape):
        raise InputError(
            f"Masks of shapes {ref.shape}, {pred.shape}"
            f"{'' if valid is None else f' and valid {np.shape(valid)}'} are not on one grid: "
            f"rasterise both sides on the same pixel grid first."
        )
    for raw in (ref_raw, pred_raw):  # labels of "no label" are never scored
        if np.issubdtype(raw.dtype, np.integer) and np.iinfo(raw.dtype).max >= IGNORE:
            ignored = raw == IGNORE
            if ignored.any():
                valid = ~ignored if valid is None else np.asarray(valid, dtype=bool) & ~ignored
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        ref, pred = ref & v, pred & v
        n = int(v.sum())
    else:
        n = ref.size
    tp = int(np.count_nonzero(ref & pred))
    n_ref = int(np.count_nonzero(ref))
    n_pred = int(np.count_nonzero(pred))
    return PixelCounts(tp, n_pred - tp, n_ref - tp, n - n_ref - n_pred + tp,
                       float(pixel_area_m2))


# --------------------------------------------------------------------------- object metrics
def _geoms(gdf: gpd.GeoDataFrame | gpd.GeoSeries) -> gpd.GeoSeries:
    geo = gdf.geometry if isinstance(gdf, gpd.GeoDataFrame) else gdf
    return geo.reset_index(drop=True)


def match_objects(reference: gpd.GeoDataFrame | gpd.GeoSeries,
                  predicted: gpd.GeoDataFrame | gpd.GeoSeries) -> pd.DataFrame:
    """Every intersecting (reference, predicted) polygon pair with its overlap measures.

    Candidate pairs come from the predicted polygons' spatial index; each pair's
    intersection is computed exactly.

    Args:
        reference: Reference polygons.
        predicted: Predicted polygons in the same CRS.

    Returns:
        One row per pair with positive overlap: ``ref`` and ``pred`` (0-based positions),
        ``inter_m2``, ``ref_area_m2``, ``pred_area_m2``, ``overlap_ref`` (intersection /
        reference area), ``overlap_pred`` (intersection / predicted area) and ``iou``.

    Raises:
        InputError: the two sides are in different CRSs.
    """
    ref, pred = _geoms(reference), _geoms(predicted)
    cols = ["ref", "pred", "inter_m2", "ref_area_m2", "pred_area_m2", "overlap_ref",
            "overlap_pred", "iou"]
    if len(ref) == 0 or len(pred) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("ref", "pred") else "float64")
                             for c in cols})
    if ref.crs != pred.crs:
        raise InputError(
            f"Reference ({ref.crs}) and predicted ({pred.crs}) polygons are in different CRSs: "
            f"reproject one side first (GeoDataFrame.to_crs)."
        )
    ri, pi = pred.sindex.query(ref.values, predicate="intersects")
    a_ref = area_m2(ref).to_numpy()
    a_pred = area_m2(pred).to_numpy()
    inter = shapely.intersection(ref.values[ri], pred.values[pi])
    a_int = area_m2(gpd.GeoSeries(inter, crs=ref.crs)).to_numpy()
    keep = a_int > 0
    ri, pi, a_int = ri[keep], pi[keep], a_int[keep]
    ar, ap = a_ref[ri], a_pred[pi]
    with np.errstate(invalid="ignore", divide="ignore"):
        df = pd.DataFrame({
            "ref": ri.astype("int64"), "pred": pi.astype("int64"), "inter_m2": a_int,
            "ref_area_m2": ar, "pred_area_m2": ap,
            "overlap_ref": np.where(ar > 0, a_int / ar, 0.0),
            "overlap_pred": np.where(ap > 0, a_int / ap, 0.0),
            "iou": a_int / np.maximum(ar + ap - a_int, 1e-12),
        })
    return df.sort_values(["ref", "pred"], kind="stable").reset_index(drop=True)


def object_metrics(reference: gpd.GeoDataFrame | gpd.GeoSeries,
                   predicted: gpd.GeoDataFrame | gpd.GeoSeries,
                   min_overlap: float = 0.1, criterion: str = "overlap",
                   ) -> tuple[dict, pd.DataFrame]:
    """Object (count) metrics of a predicted inventory against a reference.

    Definitions, with ``t = min_overlap``:

    * a reference landslide is **found** when one predicted polygon covers at least ``t``
      of its area (criterion ``"overlap"``) or has IoU >= ``t`` with it (``"iou"``);
    * a predicted polygon is **correct** when at least ``t`` of its own area lies on one
      reference landslide (``"overlap"``) or it has IoU >= ``t`` with one (``"iou"``);
      the others are false alarms;
    * precision = correct / predicted, recall = found / reference, F1 their harmonic mean
      (``0.0`` for 0/0);
    * **fragmentation** = mean number of predicted polygons per found reference, counting
      every polygon that covers ``t`` of the reference or lies ``t`` on it (1.0 is ideal);
    * **merges** = predicted polygons that cover at least ``t`` of two or more reference
      landslides (one polygon for several landslides).

    Args:
        reference: Reference polygons (projected or geographic; areas are true m2).
        predicted: Predicted polygons in the same CRS.
        min_overlap: The threshold ``t`` in (0, 1].
        criterion: ``"overlap"`` or ``"iou"``.

    Returns:
        ``(metrics, matches)``: the JSON-ready metrics dict, and one row per found
        reference landslide with its best predicted polygon (the highest IoU among those
        that find it): ``ref``, ``pred``, ``ref_area_m2``, ``pred_area_m2``, ``iou``,
        ``n_pieces`` (the area scatter plots ``ref_area_m2`` against ``pred_area_m2``).

    Raises:
        InputError: a threshold outside (0, 1] or an unknown criterion.
    """
    if not 0.0 < float(min_overlap) <= 1.0:
        raise InputError(f"min_overlap must be in (0, 1], got {min_overlap!r}.")
    if criterion not in CRITERIA:
        raise InputError(f"Unknown match criterion {criterion!r}: use one of {CRITERIA}.")
    t = float(min_overlap)
    n_ref, n_pred = len(_geoms(reference)), len(_geoms(predicted))
    pairs = match_objects(reference, predicted)
    if criterion == "iou":
        finds = pairs["iou"] >= t
        correct = finds
    else:
        finds = pairs["overlap_ref"] >= t
        correct = pairs["overlap_pred"] >= t
    pieces = pairs[(pairs["overlap_ref"] >= t) | (pairs["overlap_pred"] >= t) | finds]
    found_ids = np.unique(pairs.loc[finds, "ref"].to_numpy())
    correct_ids = np.unique(pairs.loc[correct, "pred"].to_numpy())
    n_pieces = pieces[pieces["ref"].isin(found_ids)].groupby("ref")["pred"].nunique()
    covering = pairs[pairs["overlap_ref"] >= t].groupby("pred")["ref"].nunique()
    merged = covering[covering >= 2]

    precision = ratio(len(correct_ids), n_pred)
    recall = ratio(len(found_ids), n_ref)
    metrics = {
        "criterion": criterion,
        "min_overlap": t,
        "n_reference": n_ref,
        "n_predicted": n_pred,
        "n_found": len(found_ids),
        "n_missed": n_ref - len(found_ids),
        "n_correct_predicted": len(correct_ids),
        "n_false_alarms": n_pred - len(correct_ids),
        "precision": precision,
        "recall": recall,
        "f1": f1_score(precision, recall),
        "fragmentation": float(n_pieces.mean()) if len(n_pieces) else None,
        "n_fragmented": int((n_pieces >= 2).sum()),
        "merges": len(merged),
        "n_reference_in_merges": int(merged.sum()),
    }
    # each found landslide's best match among the predictions that find it (the highest
    # IoU of any overlapping one could be a polygon that fails the criterion)
    best = pairs[finds].sort_values(["ref", "iou"], ascending=[True, False])
    best = best.drop_duplicates("ref").reset_index(drop=True)
    matches = best[["ref", "pred", "ref_area_m2", "pred_area_m2", "iou"]].copy()
    matches["n_pieces"] = n_pieces.reindex(matches["ref"]).fillna(1).astype("int64").to_numpy()
    return metrics, matches


# --------------------------------------------------------------------------- statistics
def log_bins(areas: np.ndarray, bins_per_decade: int = 10) -> np.ndarray:
    """Log-spaced bin edges covering ``areas``.

    Edges sit on multiples of ``1 / bins_per_decade`` decades, so that the distributions
    of two inventories share their bins.
    """
    a = np.asarray(areas, dtype="float64")
    a = a[np.isfinite(a) & (a > 0)]
    if a.size == 0:
        return np.array([], dtype="float64")
    k0 = math.floor(math.log10(a.min()) * bins_per_decade + 1e-9)
    k1 = math.floor(math.log10(a.max()) * bins_per_decade + 1e-9) + 1
    return 10.0 ** (np.arange(k0, k1 + 1) / bins_per_decade)


def frequency_area(areas: np.ndarray, bins_per_decade: int = 10) -> dict:
    """Frequency-area distribution: probability density of landslide areas on log bins.

    ``p(A) = n_bin / (N * bin_width)`` (per m2), so that ``sum(p * width) = 1``. The
    rollover is the area (geometric bin centre) where ``p`` peaks; when the peak is the
    smallest bin the distribution has no resolved rollover (``rollover_resolved`` False).

    Args:
        areas: Landslide areas in m2 (non-positive values are ignored).
        bins_per_decade: Bins per factor of 10 in area.

    Returns:
        ``{"edges_m2", "centers_m2", "counts", "density", "rollover_m2",
        "rollover_resolved"}`` (lists, JSON-ready; empty lists and a ``None`` rollover when
        there are no areas).
    """
    if bins_per_decade < 1:
        raise InputError(f"bins_per_decade must be >= 1, got {bins_per_decade!r}.")
    a = np.asarray(areas, dtype="float64")
    a = a[np.isfinite(a) & (a > 0)]
    edges = log_bins(a, bins_per_decade)
    if a.size == 0:
        return {"edges_m2": [], "centers_m2": [], "counts": [], "density": [],
                "rollover_m2": None, "rollover_resolved": False}
    counts, _ = np.histogram(a, bins=edges)
    widths = np.diff(edges)
    density = counts / (a.size * widths)
    centers = np.sqrt(edges[:-1] * edges[1:])
    peak = int(np.argmax(density))
    first = int(np.flatnonzero(counts)[0])
    return {
        "edges_m2": edges.tolist(), "centers_m2": centers.tolist(),
        "counts": counts.astype(int).tolist(), "density": density.tolist(),
        "rollover_m2": float(centers[peak]), "rollover_resolved": peak > first,
    }


def fit_power_law(areas: np.ndarray, a_min: float) -> dict:
    """Maximum-likelihood exponent of a power-law tail ``p(A) ~ A**-beta`` for ``A >= a_min``.

    The continuous estimator of Clauset, Shalizi & Newman (2009, eq. 3.1):
    ``beta = 1 + n / sum(ln(A_i / a_min))`` over the ``n`` areas ``>= a_min``, with
    standard error ``(beta - 1) / sqrt(n)``.

    Args:
        areas: Landslide areas in m2.
        a_min: Lower bound of the tail (m2), e.g. the rollover.

    Returns:
        ``{"beta", "beta_se", "a_min_m2", "n_tail"}``; ``beta`` and ``beta_se`` are ``None``
        with a ``note`` when fewer than :data:`MIN_TAIL_SAMPLES` areas lie in the tail.
    """
    if not (a_min > 0 and math.isfinite(a_min)):
        raise InputError(f"a_min must be a positive area in m2, got {a_min!r}.")
    a = np.asarray(areas, dtype="float64")
    tail = a[np.isfinite(a) & (a >= a_min)]
    out: dict = {"beta": None, "beta_se": None, "a_min_m2": float(a_min), "n_tail": int(tail.size)}
    logs = np.log(tail / a_min)
    if tail.size < MIN_TAIL_SAMPLES or logs.sum() <= 0:
        out["note"] = (f"only {tail.size} landslides of at least {a_min:.0f} m2: need "
                       f"{MIN_TAIL_SAMPLES} to fit the power-law tail")
        return out
    beta = 1.0 + tail.size / float(logs.sum())
    out["beta"] = beta
    out["beta_se"] = (beta - 1.0) / math.sqrt(tail.size)
    return out


def inventory_stats(areas: np.ndarray, area_km2: float | None = None,
                    bins_per_decade: int = 10, a_min: float | None = None) -> dict:
    """Statistics of one inventory: count, areas, density and frequency-area distribution.

    Args:
        areas: Landslide areas in m2, one per polygon.
        area_km2: Area over which the density is computed (the area of interest, or the
            common extent); ``None`` or 0 gives a ``None`` density.
        bins_per_decade: Log bins per decade for the frequency-area distribution.
        a_min: Lower bound of the power-law tail; ``None`` uses the rollover.

    Returns:
        ``count``, ``total_area_m2``, ``min/max/mean/median_area_m2`` (``None`` when empty),
        ``density_per_km2``, ``rollover_m2``, ``beta``, ``beta_se``, ``a_min_m2``,
        ``n_tail``, ``fad`` (the :func:`frequency_area` dict) and ``notes`` (why a value is
        missing: fewer than :data:`MIN_FAD_SAMPLES` landslides, no area...).
    """
    a = np.asarray(areas, dtype="float64")
    a = a[np.isfinite(a) & (a > 0)]
    n = int(a.size)
    notes: list[str] = []
    out: dict = {
        "count": n,
        "total_area_m2": float(a.sum()),
        "min_area_m2": float(a.min()) if n else None,
        "max_area_m2": float(a.max()) if n else None,
        "mean_area_m2": float(a.mean()) if n else None,
        "median_area_m2": float(np.median(a)) if n else None,
        "density_per_km2": (n / area_km2) if area_km2 else None,
        "rollover_m2": None, "rollover_resolved": False,
        "beta": None, "beta_se": None, "a_min_m2": None, "n_tail": 0,
    }
    if not area_km2:
        notes.append("no area to compute a density over")
    fad = frequency_area(a, bins_per_decade)
    out["fad"] = fad
    if n < MIN_FAD_SAMPLES:
        notes.append(f"{n} landslides: need {MIN_FAD_SAMPLES} for the frequency-area "
                     f"rollover and power-law fit")
    else:
        out["rollover_m2"] = fad["rollover_m2"]
        out["rollover_resolved"] = fad["rollover_resolved"]
        if not fad["rollover_resolved"]:
            notes.append("no rollover resolved: the density peaks in the smallest area bin")
        fit = fit_power_law(a, float(a_min) if a_min else fad["rollover_m2"])
        if "note" in fit:
            notes.append(fit.pop("note"))
        out.update(fit)
    out["notes"] = notes
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> dict:
    """Pearson correlation of two series (e.g. yearly counts of two inventories).

    Returns:
        ``{"r", "p_value", "n"}``; ``r`` and ``p_value`` are ``None`` with a ``note`` for
        fewer than 3 pairs or a constant series.
    """
    xa = np.asarray(x, dtype="float64")
    ya = np.asarray(y, dtype="float64")
    if xa.shape != ya.shape:
        raise InputError(f"pearson needs series of equal length, got {xa.size} and {ya.size}.")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    out: dict = {"r": None, "p_value": None, "n": int(xa.size)}
    if xa.size < 3:
        out["note"] = f"{xa.size} years with both inventories: need at least 3"
        return out
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        out["note"] = "one of the series is constant: the correlation is undefined"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.pearsonr(xa, ya)
    out["r"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


#: Statistics compared across years by :func:`multitemporal`.
TREND_KEYS = ("count", "total_area_m2", "density_per_km2")


def multitemporal(reference: Mapping[int, dict],
                  predicted: Mapping[int, dict] | None = None) -> dict:
    """The statistics table across years, differences and Pearson correlations.

    Args:
        reference: ``{year: inventory_stats(...)}`` of the reference inventory.
        predicted: The same for the prediction (``None`` in stats-only mode).

    Returns:
        ``rows``: one dict per year (sorted) with ``reference_<key>``, ``predicted_<key>``
        and ``diff_<key>`` (predicted minus reference) for :data:`TREND_KEYS`, plus
        ``reference_count_change`` (vs the previous year listed); ``peak_year`` of each
        side (most landslides); ``pearson_count`` and ``pearson_total_area`` over the
        years where both sides exist (only with a prediction).
    """
    years = sorted(set(reference) | set(predicted or {}))
    rows = []
    prev: float | None = None
    for y in years:
        row: dict = {"year": y}
        for side, table in (("reference", reference), ("predicted", predicted)):
            if table is None:
                continue
            s = table.get(y)
            for k in TREND_KEYS:
                row[f"{side}_{k}"] = None if s is None else s.get(k)
        if predicted is not None:
            for k in TREND_KEYS:
                r, p = row.get(f"reference_{k}"), row.get(f"predicted_{k}")
                row[f"diff_{k}"] = None if r is None or p is None else p - r
        c = row.get("reference_count")
        row["reference_count_change"] = None if c is None or prev is None else c - prev
        if c is not None:
            prev = c
        rows.append(row)

    def peak(table: Mapping[int, dict] | None) -> int | None:
        if not table:
            return None
        counts = {y: s["count"] for y, s in table.items() if s is not None}
        return max(counts, key=lambda y: (counts[y], -y)) if counts else None

    out: dict = {"years": years, "rows": rows, "peak_year": {"reference": peak(reference)}}
    if predicted is not None:
        out["peak_year"]["predicted"] = peak(predicted)
        both = [y for y in years if reference.get(y) is not None
                and predicted.get(y) is not None]
        out["years_with_both"] = both
        out["pearson_count"] = pearson([reference[y]["count"] for y in both],
                                       [predicted[y]["count"] for y in both])
        out["pearson_total_area"] = pearson([reference[y]["total_area_m2"] for y in both],
                                            [predicted[y]["total_area_m2"] for y in both])
    return out


# --------------------------------------------------------------------------- density maps
def kde_density(x: np.ndarray, y: np.ndarray, bounds: tuple[float, float, float, float],
                cell_m: float, bandwidth_m: float) -> np.ndarray:
    """Gaussian kernel density of points, in points per km2, on a regular grid.

    The points are binned on the grid and convolved with a Gaussian of standard deviation
    ``bandwidth_m`` (a binned KDE: exact up to the cell size, linear in the number of
    cells, and with the same kernel for every inventory so maps share one scale). The map
    integrates to the number of points, less the mass that spreads past the edges.

    Args:
        x: Point x coordinates (projected metres), e.g. landslide centroids.
        y: Point y coordinates.
        bounds: ``(left, bottom, right, top)`` of the map.
        cell_m: Cell size of the map in metres.
        bandwidth_m: Kernel standard deviation in metres.

    Returns:
        ``(rows, cols)`` float64 array, row 0 at the top, in points per km2.
    """
    if not (cell_m > 0 and bandwidth_m > 0):
        raise InputError(f"cell_m ({cell_m}) and bandwidth_m ({bandwidth_m}) must be positive.")
    left, bottom, right, top = bounds
    if not (right > left and top > bottom):
        raise InputError(f"Empty map bounds {bounds}.")
    ncol = max(1, math.ceil((right - left) / cell_m))
    nrow = max(1, math.ceil((top - bottom) / cell_m))
    xa = np.asarray(x, dtype="float64")
    ya = np.asarray(y, dtype="float64")
    counts, _, _ = np.histogram2d(
        top - ya, xa - left, bins=(nrow, ncol),
        range=((0.0, nrow * cell_m), (0.0, ncol * cell_m)))
    smooth = ndimage.gaussian_filter(counts, sigma=bandwidth_m / cell_m, mode="constant",
                                     truncate=4.0)
    return smooth / (cell_m * cell_m) * 1e6


__all__ = [
    "CRITERIA",
    "PixelCounts",
    "f1_score",
    "fit_power_law",
    "frequency_area",
    "inventory_stats",
    "kde_density",
    "log_bins",
    "match_objects",
    "multitemporal",
    "object_metrics",
    "pearson",
    "pixel_counts",
    "ratio",
]
