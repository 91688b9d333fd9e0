"""One comparison end to end: :func:`run_compare` wires the stages; :func:`compare_command`.

Reads every input, chooses the CRS, computes the per-year pixel and object metrics and
statistics and the multi-temporal table, and hands the result to the outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import geopandas as gpd
import pandas as pd

from pipelines import errors
from pipelines.compare.config import METRICS_VERSION, CompareConfig, _year_key, static_note
from pipelines.compare.inputs import (
    SIDES,
    ResolvedInput,
    Side,
    _choose_crs,
    _native,
    _observed_references,
    _to_common,
    _union_bounds,
    predictions_on_unlabelled,
    predictions_on_unobserved,
    resolve_input,
)
from pipelines.compare.outputs import _write_outputs
from pipelines.compare.pixel_metrics import ConfusionOverview, _pixel_metrics
from pipelines.compare.problems import Problems
from pipelines.errors import DataNotFoundError, InputError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.grid import WGS84, load_region, to_crs
from pipelines.geo.inventory import area_m2

logger = logging.getLogger(__name__)



def run_compare(config: CompareConfig) -> dict:
    """Compare (or describe) the inventories of ``config`` and write every output.

    Args:
        config: The validated configuration.

    Returns:
        The metrics dict written to ``metrics.json``. Its ``status`` is ``"ok"``,
        ``"partial"`` (some inputs or years failed: see ``problems``) or ``"failed"``
        (nothing could be computed; the report still says why).

    Raises:
        ConfigError, RegionError, CRSError: the AOI or the configuration itself is unusable.
        OutputError: the outputs cannot be written.
    """
    from pipelines import report as rpt

    problems = Problems()
    region = load_region(config.aoi) if config.aoi else None
    years: tuple[int | None, ...] = config.years or (None,)
    templates = {"reference": config.reference, "predicted": config.predicted}
    roles = [r for r in SIDES if templates[r]]
    missing: dict[str, list] = {r: [] for r in roles}
    inputs_report: dict[str, dict] = {r: {} for r in roles}

    with contextlib.ExitStack() as stack:
        # 1. Resolve and read every input in its own CRS.
        natives: dict[tuple[str, int | None], tuple[ResolvedInput, object, str, dict]] = {}
        for year in years:
            for role in roles:
                try:
                    res = resolve_input(str(templates[role]), year, role)
                    natives[(role, year)] = (res, *_native(res, stack))
                except DataNotFoundError as exc:
                    missing[role].append(year)
                    other = [r for r in roles if r != role]
                    tail = (f" {year} is reported from the {other[0]} inventory alone."
                            if other and year is not None else "")
                    problems.add("warning" if other else "error", f"{exc}{tail}", role, year,
                                 exc)
                except errors.LandslideError as exc:
                    problems.add("error", str(exc), role, year, exc)
        for role in roles:
            if config.years and len(missing[role]) == len(years):
                problems.add("error", f"no {role} file was found for any year: check the "
                             f"template {templates[role]!r}", role)
        flat = {k: (v[1], v[2], v[3]) for k, v in natives.items()}
        crs, crs_reason = _choose_crs(config, flat, region)
        logger.info("comparing in %s (%s)", crs, crs_reason)
        aoi = to_crs(region.geometry, WGS84, crs) if region is not None else None

        # 2. Common CRS, AOI clip, area filter.
        sides: dict[tuple[str, int | None], Side] = {}
        for (role, year), (res, native, native_crs, rep) in natives.items():
            try:
                side = _to_common(role, year, res, native, native_crs, rep, crs, aoi, config)
            except errors.LandslideError as exc:
                problems.add("error", str(exc), role, year, exc)
                inputs_report[role][_year_key(year)] = {**rep, "error": str(exc)}
                continue
            sides[(role, year)] = side
            inputs_report[role][_year_key(year)] = side.report
            if rep.get("n_invalid_repaired"):
                problems.add("warning", f"{rep['n_invalid_repaired']} invalid geometries "
                             f"repaired in {res.label}", role, year)
            if len(side.gdf) == 0:
                problems.add("warning", f"the {role} inventory {res.label} holds no landslides"
                             f"{' inside the AOI' if aoi is not None else ''}", role, year)

        # 2b. Where a raster prediction had no imagery, reference landslides are unobservable.
        observed_refs = _observed_references(sides, years, aoi, config) \
            if config.observed_only else {}
        leave_out: dict = {}  # year -> predicted polygons not matched or counted
        for year, side in observed_refs.items():
            n_out = side.report["n_unobserved"]
            inputs_report["reference"][_year_key(year)]["n_unobserved"] = n_out
            if n_out:
                logger.info("%s: %d reference landslide(s) lie mostly where the prediction "
                            "had no valid imagery; they are not matched or counted",
                            _year_key(year), n_out)
            pside = sides[("predicted", year)]
            drop = predictions_on_unobserved(pside.gdf, side.gdf, side.unobserved,
                                             config.min_overlap, config.match)
            inputs_report["predicted"][_year_key(year)]["n_on_unobserved"] = int(drop.sum())
            if drop.any():
                logger.info("%s: %d predicted landslide(s) lie on those unobserved reference "
                            "landslides; they are not matched or counted either",
                            _year_key(year), int(drop.sum()))
                leave_out[year] = drop
        # 2c. Where a raster reference holds no label, predictions are not scored either.
        unlabelled = predictions_on_unlabelled(sides, years, aoi, config) \
            if config.observed_only else {}
        for year, drop in unlabelled.items():
            inputs_report["predicted"][_year_key(year)]["n_on_unlabelled"] = int(drop.sum())
            if drop.any():
                logger.info("%s: %d predicted landslide(s) lie mostly where the reference "
                            "raster holds no label (no data); they are not matched or counted",
                            _year_key(year), int(drop.sum()))
                leave_out[year] = leave_out.get(year, False) | drop
        observed_preds: dict = {}
        for year, drop in leave_out.items():
            pside = sides[("predicted", year)]
            # the same dict as inputs_report's: the report's "unobserved" column reads it
            pside.report["n_left_out"] = int(drop.sum())
            observed_preds[year] = dataclasses.replace(
                pside, gdf=pside.gdf[~drop].reset_index(drop=True))

        # 3. Density area.
        if region is not None:
            area_km2 = float(area_m2(gpd.GeoSeries([region.geometry], crs=WGS84)).iloc[0]) / 1e6
            density = {"basis": "aoi", "area_km2": area_km2}
        else:
            ext = _union_bounds([s.bounds for s in sides.values()])
            area_km2 = ((ext[2] - ext[0]) * (ext[3] - ext[1]) / 1e6) if ext else 0.0
            density = {"basis": "extent (bounding box of all inputs, all years)",
                       "area_km2": area_km2, "bounds": list(ext) if ext else None}

        # 4. Per-year metrics and statistics.
        per_year: dict[str, dict] = {}
        stats: dict[str, dict[int | None, dict]] = {r: {} for r in roles}
        overviews: dict[int | None, ConfusionOverview] = {}
        matches_all: list[pd.DataFrame] = []
        for year in years:
            entry: dict = {"pixel": None, "object": None, "stats": {}}
            for role in roles:
                s = sides.get((role, year))
                if role == "reference" and year in observed_refs:
                    s = observed_refs[year]
                if role == "predicted" and year in observed_preds:
                    s = observed_preds[year]
                if s is not None:
                    st = cm.inventory_stats(s.gdf["area_m2"].to_numpy(), area_km2,
                                            config.bins_per_decade, config.a_min)
                    if role in config.static_sides:
                        st = {**st, "notes": [*st.get("notes", []),
                                              SAME_EVERY_YEAR.format(role=role)]}
                    stats[role][year] = st
                    entry["stats"][role] = st
            ref, pred = sides.get(("reference", year)), sides.get(("predicted", year))
            if ref is not None and pred is not None:
                try:
                    entry["pixel"] = _pixel_metrics(ref, pred, crs, aoi, config, overviews, year)
                except errors.LandslideError as exc:
                    problems.add("error", f"pixel metrics failed: {exc}", None, year, exc)
                if entry["pixel"] is None and ref.bounds is None and pred.bounds is None:
                    problems.add("warning", "both inventories are empty and no AOI was given: "
                                 "no grid for pixel metrics", None, year)
                ref_obj = observed_refs.get(year, ref)
                pred_obj = observed_preds.get(year, pred)
                obj, matches = cm.object_metrics(ref_obj.gdf, pred_obj.gdf, config.min_overlap,
                                                 config.match)
                entry["object"] = obj
                if len(matches):
                    matches_all.append(matches.assign(year=_year_key(year)))
            if entry["stats"]:
                per_year[_year_key(year)] = entry

        multi = None
        if "reference" in stats and (stats["reference"] or stats.get("predicted")):
            multi = cm.multitemporal(
                {y: s for y, s in stats["reference"].items() if y is not None},
                {y: s for y, s in stats["predicted"].items() if y is not None}
                if "predicted" in stats else None)
            if multi is not None and config.static_sides:
                multi = same_every_year(multi, config)
        # a year missing one side is incomplete too: the command exits 1 for it
        incomplete = problems.errors() or any(missing.values())
        status = ("failed" if not per_year else "partial" if incomplete else "ok")
        if status == "failed":
            problems.add("error", "nothing could be computed: no input could be read inside "
                         "the area of interest (see the problems above)")

        metrics: dict = {
            "version": METRICS_VERSION,
            "status": status,
            "mode": config.mode,
            "crs": crs,
            "crs_reason": crs_reason,
            "resolution_m": config.resolution,
            "aoi": config.aoi,
            "density_area": density,
            "years": per_year,
            "multitemporal": multi if config.years else None,
            # sides without {year}: the same inventory in every year's row
            "same_every_year": list(config.static_sides),
            "inputs": inputs_report,
            "missing_years": {r: [_year_key(y) for y in v] for r, v in missing.items()},
            "problems": problems.items,
        }
        _write_outputs(config, metrics, stats, sides, overviews, matches_all, aoi, crs,
                       problems, rpt)
    return metrics


#: The note a side without ``{year}`` gets in its statistics of every year.
SAME_EVERY_YEAR = "the same {role} inventory every year (its path holds no {{year}})"


def same_every_year(multi: dict, config: CompareConfig) -> dict:
    """The multi-temporal table of ``multi`` with its static sides marked, not trended.

    A side that is the same inventory every year (:attr:`CompareConfig.static_sides`)
    gets no peak year and no change from year to year (its numbers repeat one
    inventory's), and the table says so in ``same_every_year`` and ``note``.
    """
    out = {**multi, "same_every_year": list(config.static_sides), "note": static_note(config)}
    out["peak_year"] = {k: None if k in config.static_sides else v
                        for k, v in (multi.get("peak_year") or {}).items()}
    for name in ("pearson_count", "pearson_total_area"):
        if multi.get(name) is not None:
            out[name] = {"r": None, "p_value": None, "n": multi[name].get("n"),
                         "note": f"undefined: the {' and '.join(config.static_sides)} is the "
                                 f"same inventory every year"}
    if "reference" in config.static_sides:
        out["rows"] = [{**r, "reference_count_change": None} for r in multi.get("rows", [])]
    return out


def incomplete_reasons(metrics: dict) -> list[str]:
    """Why a comparison is not complete, as short sentences (none when it is).

    The errors of its problems (or, without any, all of them: a missing inventory is a
    warning there) and the inventories missing per side; for the callers that stop on an
    incomplete comparison (the demo's stage, a scan's period).
    """
    problems = metrics.get("problems") or []
    why = [p["message"] for p in problems if p.get("level") == "error"] or [
        p["message"] for p in problems]
    why += [f"no {role} inventory" + (f" for {', '.join(map(str, years))}"
                                      if years != ["all"] else "")
            for role, years in (metrics.get("missing_years") or {}).items() if years]
    return [m.rstrip(". ") for m in why]


def compare_command(config: CompareConfig) -> int:
    """``landslides compare``: run :func:`run_compare` and say whether it is complete.

    Returns:
        0 when every requested inventory of every year was read and compared; 1 when the
        report was written but is incomplete: an inventory could not be read (missing,
        truncated, unusable) or a year lacks one side (the report and metrics.json say
        which; status ``partial``).

    Raises:
        LandslideError: nothing could be computed (the report and metrics.json are written
            first and say why).
    """
    metrics = run_compare(config)
    errs = [p for p in metrics["problems"] if p["level"] == "error"]
    if metrics["status"] == "failed":
        first = next((p for p in errs if p.get("type")), None)
        cls = getattr(errors, first["type"], InputError) if first else InputError
        if not (isinstance(cls, type) and issubclass(cls, errors.LandslideError)):
            cls = InputError
        detail = "; ".join(p["message"] for p in errs)
        raise cls(f"Nothing could be compared: {detail}. The report is in {config.out}.")
    for p in errs:
        logger.error("%s", p["message"])
    missing = {role: years for role, years in metrics["missing_years"].items() if years}
    if missing:
        logger.error("Missing inventories (%s): the comparison is incomplete; see %s.",
                     "; ".join(f"{r} {', '.join(y)}" for r, y in missing.items()), config.out)
    return 1 if errs or missing else 0
