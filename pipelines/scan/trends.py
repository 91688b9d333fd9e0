"""The multi-temporal table of a scan: one row per done period, changes, correlations.

Built from the periods' done-records (``period.json``); :mod:`pipelines.scan.summary`
writes it as ``trends.csv``/``trends.json`` and draws it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Columns of ``trends.csv``.
TREND_COLUMNS = (
    "period", "start", "end",
    "predicted_count", "predicted_total_area_m2", "predicted_density_per_km2",
    "predicted_count_change",
    "reference_count", "reference_total_area_m2", "reference_density_per_km2",
    "diff_count", "diff_total_area_m2", "diff_density_per_km2",
    "pixel_precision", "pixel_recall", "pixel_f1", "pixel_iou", "object_f1",
    "valid_km2", "aoi_km2", "sweep_landslide_km2", "model_id",
)


def _years_axis(records: Sequence[dict]) -> tuple[list[int], dict[int, str] | None]:
    """The x positions of the periods: their years when every period is a calendar year."""
    names = [r["period"]["name"] for r in records]
    if all(n.isdigit() and int(n) == int(r["period"]["start"][:4]) for n, r in
           zip(names, records)) and len(set(names)) == len(names):
        return [int(n) for n in names], None
    xs = list(range(len(records)))
    return xs, dict(zip(xs, names))


#: Why the reference's trend and correlations are not given for a reference without
#: ``{year}`` or ``{period}`` (the same inventory in every period).
STATIC_REFERENCE = "undefined: the reference is the same inventory every period"


def trend_table(records: Sequence[dict], with_reference: bool,
                static_reference: bool = False) -> dict:
    """The multi-temporal table of done periods, with differences and correlations.

    Args:
        records: Done-records (``period.json``), sorted by start date.
        with_reference: Whether a reference inventory is configured.
        static_reference: The reference is the same inventory in every period (its path
            holds no ``{year}`` or ``{period}``): its numbers repeat one inventory's, so it
            gets no peak period and no correlation (:data:`STATIC_REFERENCE`).

    Returns:
        ``rows`` (one per period, :data:`TREND_COLUMNS`), ``multitemporal`` (the structure
        :func:`pipelines.report.trends_figure` draws), ``correlations`` (Pearson r with
        p-values; ``None`` with a note below 3 periods).
    """
    from pipelines.geo import compare_metrics as cm

    xs, labels = _years_axis(records)
    pred: dict[int, dict] = {x: r["stats"]["predicted"] for x, r in zip(xs, records)
                             if r["stats"].get("predicted")}
    ref: dict[int, dict] = {x: r["stats"]["reference"] for x, r in zip(xs, records)
                            if r["stats"].get("reference")}
    multi = cm.multitemporal(ref if with_reference else {}, pred)
    if labels:
        multi["labels"] = labels
        multi["x_label"] = "Period"
    by_x = {row["year"]: row for row in multi["rows"]}
    rows = []
    prev = None
    for x, r in zip(xs, records):
        m = by_x.get(x, {})
        pix = r.get("pixel") or {}
        obj = r.get("object") or {}
        km2 = (r.get("sweep") or {}).get("km2") or {}
        count = m.get("predicted_count")
        row = {
            "period": r["period"]["name"], "start": r["period"]["start"],
            "end": r["period"]["end"],
            **{k: m.get(k) for k in TREND_COLUMNS if k.startswith(("predicted_", "reference_",
                                                                    "diff_"))},
            "predicted_count_change": None if count is None or prev is None else count - prev,
            "pixel_precision": pix.get("precision"), "pixel_recall": pix.get("recall"),
            "pixel_f1": pix.get("f1"), "pixel_iou": pix.get("iou"),
            "object_f1": obj.get("f1"),
            "valid_km2": km2.get("valid"), "aoi_km2": km2.get("aoi"),
            "sweep_landslide_km2": km2.get("landslides"), "model_id": r.get("model_id"),
        }
        if not with_reference:
            for k in list(row):
                if k.startswith(("reference_", "diff_")):
                    row[k] = None
        if count is not None:
            prev = count
        rows.append(row)
    t = [_decimal_year(r["period"]["start"]) for r in records]
    counts = [_num(row["predicted_count"]) for row in rows]
    areas = [_num(row["predicted_total_area_m2"]) for row in rows]
    corr = {"predicted_count_vs_time": cm.pearson(t, counts),
            "predicted_total_area_vs_time": cm.pearson(t, areas)}
    if with_reference:
        rc = [_num(row["reference_count"]) for row in rows]
        ra = [_num(row["reference_total_area_m2"]) for row in rows]
        corr["predicted_vs_reference_count"] = cm.pearson(rc, counts)
        corr["predicted_vs_reference_total_area"] = cm.pearson(ra, areas)
        corr["reference_count_vs_time"] = cm.pearson(t, rc)
        if static_reference:
            for k in ("predicted_vs_reference_count", "predicted_vs_reference_total_area",
                      "reference_count_vs_time"):
                corr[k] = {"r": None, "p_value": None, "n": corr[k]["n"],
                           "note": STATIC_REFERENCE}
            multi["peak_year"] = {**multi.get("peak_year", {}), "reference": None}
            multi["note"] = STATIC_REFERENCE
    return {"rows": rows, "multitemporal": multi, "correlations": corr}


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy scalars as Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _decimal_year(date: str) -> float:
    d = dt.date.fromisoformat(date)
    start = dt.date(d.year, 1, 1)
    return d.year + (d - start).days / (dt.date(d.year + 1, 1, 1) - start).days


__all__ = [
    "STATIC_REFERENCE",
    "TREND_COLUMNS",
    "trend_table",
]
