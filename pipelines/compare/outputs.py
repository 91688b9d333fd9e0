"""The outputs of a comparison: tables, figures, metrics.json and report.html, published at once.

Everything is written into a local staging folder first, then copied to ``--out`` (local
or ``gs://``) through :mod:`pipelines.fsio`, figures first and the report last, so the
report never links a missing file. The figures and the page are drawn by
:mod:`pipelines.report`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.enums import Resampling

from pipelines import errors, fsio
from pipelines.compare.config import CompareConfig, _year_key, static_note
from pipelines.compare.inputs import SIDES, _union_bounds
from pipelines.compare.problems import Problems
from pipelines.errors import DataNotFoundError
from pipelines.geo import compare_metrics as cm
from pipelines.geo.grid import PixelGrid

logger = logging.getLogger(__name__)

#: Density maps are this many cells on their long side.
DENSITY_CELLS = 200


STATS_COLUMNS = ("inventory", "year", "source", "count", "total_area_m2", "min_area_m2",
                 "max_area_m2", "mean_area_m2", "median_area_m2", "density_per_km2",
                 "density_area_km2", "density_area_basis", "rollover_m2", "beta", "beta_se",
                 "a_min_m2", "n_tail", "n_read", "n_invalid_repaired", "notes")


def stats_rows(metrics: dict) -> list[dict]:
    """One row per inventory kind and year, as written to ``stats.csv``."""
    rows = []
    dens = metrics["density_area"]
    for ykey, entry in metrics["years"].items():
        for role, st in entry["stats"].items():
            rep = metrics["inputs"].get(role, {}).get(ykey, {})
            row = {k: st.get(k) for k in STATS_COLUMNS if k in st}
            row.update({
                "inventory": role, "year": ykey, "source": rep.get("path"),
                "density_area_km2": dens["area_km2"], "density_area_basis": dens["basis"],
                "n_read": rep.get("n_read"), "n_invalid_repaired": rep.get("n_invalid_repaired"),
                "notes": "; ".join(st.get("notes", [])),
            })
            rows.append({k: row.get(k) for k in STATS_COLUMNS})
    return rows


def _density_maps(sides: dict, years: list, crs: str, bounds: tuple | None,
                  config: CompareConfig) -> tuple[dict, dict]:
    """KDE maps ``{year: {role: array}}`` over ``bounds`` and their parameters."""
    if bounds is None:
        return {}, {}
    w, h = bounds[2] - bounds[0], bounds[3] - bounds[1]
    side = max(w, h, 1.0)
    cell = max(side / DENSITY_CELLS, config.resolution)
    bw = config.kde_bandwidth_m or max(side / 25.0, 2 * cell)
    maps: dict = {}
    for year in years:
        for role in SIDES:
            s = sides.get((role, year))
            if s is None:
                continue
            c = shapely.centroid(s.gdf.geometry.values) if len(s.gdf) else np.array([])
            x = shapely.get_x(c) if len(c) else np.zeros(0)
            y = shapely.get_y(c) if len(c) else np.zeros(0)
            maps.setdefault(year, {})[role] = cm.kde_density(x, y, bounds, cell, bw)
    return maps, {"cell_m": cell, "bandwidth_m": bw, "bounds": list(bounds), "crs": crs}


def _write_outputs(config: CompareConfig, metrics: dict, stats: dict, sides: dict,
                   overviews: dict, matches_all: list, aoi: shapely.Geometry | None, crs: str,
                   problems: Problems, rpt) -> None:
    """Write every output into a local staging folder, then publish it to ``config.out``."""
    years = [None if k == "all" else int(k) for k in metrics["years"]]
    with tempfile.TemporaryDirectory(prefix="landslides-compare-") as stage:
        figdir = Path(stage, "figures")
        figdir.mkdir()
        figures: dict[str, list[dict]] = {"overlay": [], "density": [], "other": [],
                                          "explain": []}

        def fig(kind: str, name: str, title: str, draw) -> None:
            if not config.figures:
                return
            path = figdir / name
            try:
                draw(str(path))
            except Exception as exc:  # one bad figure must not lose the report
                problems.add("warning", f"figure {name} failed: {exc}")
                return
            figures[kind].append({"path": f"figures/{name}", "title": title})

        # Overlay maps of true positives, misses and false alarms.
        for year in years:
            ov = overviews.get(year)
            if ov is None:
                continue
            bg = None
            if config.background and config.figures:
                try:
                    bg = _read_background(config.background, ov.grid)
                except (errors.LandslideError, rasterio.errors.RasterioError, OSError) as exc:
                    problems.add("warning", f"background {config.background!r} not drawn: {exc}")
            pix = metrics["years"][_year_key(year)]["pixel"]
            fig("overlay", f"overlay_{_year_key(year)}.png",
                f"True positives, misses and false alarms ({_year_key(year)})",
                lambda p, ov=ov, bg=bg, pix=pix, y=year: rpt.overlay_figure(
                    ov.classes, ov.grid.bounds, p, background=bg, metrics=pix,
                    title=f"{_year_key(y)}: reference vs prediction", crs=crs))

        # Density maps, one colour scale for all.
        ext = aoi.bounds if aoi is not None else _union_bounds([s.bounds for s in sides.values()])
        maps, kde = _density_maps(sides, years, crs, ext, config)
        metrics["density_maps"] = kde or None
        vmax = max((float(a.max()) for m in maps.values() for a in m.values() if a.size),
                   default=0.0)
        for year, m in maps.items():
            fig("density", f"density_{_year_key(year)}.png",
                f"Landslide density ({_year_key(year)})",
                lambda p, m=m, y=year: rpt.density_figure(
                    m, ext, p, vmax=vmax, bandwidth_m=kde["bandwidth_m"],
                    title=f"Landslide density, {_year_key(y)} (landslides/km²)", aoi=aoi,
                    crs=crs))

        # Frequency-area distributions, matched-area scatter, trends.
        if any(stats.values()):
            fig("other", "frequency_area.png", "Frequency-area distributions",
                lambda p: rpt.fad_figure(stats, p))
        matches = (pd.concat(matches_all, ignore_index=True) if matches_all
                   else pd.DataFrame(columns=["year", "ref", "pred", "ref_area_m2",
                                              "pred_area_m2", "iou", "n_pieces"]))
        if len(matches):
            fig("other", "area_scatter.png", "Matched landslide areas",
                lambda p: rpt.scatter_figure(matches, p))
        if metrics.get("multitemporal") and len(metrics["multitemporal"]["rows"]) >= 2:
            fig("other", "trends.png", "Trends across years",
                lambda p: rpt.trends_figure(metrics["multitemporal"], p))
        figures["explain"] = _explanations(config, figdir, problems)
        metrics["figures"] = figures

        rows = stats_rows(metrics)
        outputs = {
            "compare_config.json": json.dumps(config.to_dict(), indent=2).encode("utf-8"),
            "stats.csv": fsio.csv_bytes(rows, STATS_COLUMNS),
            "matches.csv": matches[["year", "ref", "pred", "ref_area_m2", "pred_area_m2",
                                    "iou", "n_pieces"]].to_csv(index=False).encode("utf-8"),
        }
        metrics["outputs"] = sorted([*outputs, "metrics.json", "report.html",
                                     *[f["path"] for v in figures.values() for f in v]])
        outputs["metrics.json"] = json.dumps(_jsonable(metrics), indent=2,
                                             sort_keys=False).encode("utf-8")
        outputs["report.html"] = rpt.render_html(metrics, rows,
                                                 _report_config(config)).encode("utf-8")
        for name, data in outputs.items():
            Path(stage, name).write_bytes(data)

        # Publish: figures first, report last, so the report never links missing files.
        fsio.makedirs(config.out)
        order = [f["path"] for v in figures.values() for f in v] + [
            "compare_config.json", "stats.csv", "matches.csv", "metrics.json", "report.html"]
        for rel in order:
            fsio.put_file(os.path.join(stage, rel), fsio.join(config.out, *rel.split("/")))
    logger.info("comparison written to %s (status %s)", config.out, metrics["status"])


def _report_config(config: CompareConfig) -> dict:
    """The configuration the report shows: ``config``'s, with a note on a static side.

    A side that is the same inventory every year gets the sentence of
    :func:`~pipelines.compare.config.static_note` among the notes.
    """
    d = config.to_dict()
    note = static_note(config)
    if note:
        d["notes"] = [*(d.get("notes") or ()), note]
    return d


def _explanations(config: CompareConfig, figdir: Path, problems: Problems) -> list[dict]:
    """Copy the Grad-CAM PNGs of ``config.explanations`` into ``figures/explain/``.

    A pattern that matches nothing is a warning in the report, not a failure.
    """
    out: list[dict] = []
    if not config.explanations:
        return out
    (figdir / "explain").mkdir(exist_ok=True)
    for pattern in config.explanations:
        paths = sorted(fsio.glob(pattern)) if any(c in pattern for c in "*?[") else (
            [pattern] if fsio.exists(pattern) else [])
        pngs = [p for p in paths if p.lower().endswith(".png")]
        if not pngs:
            problems.add("warning", f"explanations {pattern!r}: no PNG found")
        for path in pngs:
            name = f"{len(out):03d}_{os.path.basename(path)}"
            with fsio.local_copy(path) as local:
                shutil.copyfile(local, figdir / "explain" / name)
            out.append({"path": f"figures/explain/{name}",
                        "title": os.path.splitext(os.path.basename(path))[0]})
    return out


def _read_background(path: str, grid: PixelGrid) -> np.ndarray:
    """The background raster on ``grid``: ``(h, w)`` grey or ``(h, w, 3)`` RGB in 0..1."""
    from pipelines.geo.cog import read_raster

    if not fsio.exists(path):
        raise DataNotFoundError(f"Background raster {path!r} does not exist.")
    data, _ = read_raster(path, window_grid=grid, resampling=Resampling.average)
    data = data.astype("float64")
    data[~np.isfinite(data)] = np.nan
    bands = data[:3] if data.shape[0] >= 3 else data[:1]
    out = np.empty_like(bands)
    for i, b in enumerate(bands):
        ok = np.isfinite(b) & (b != 0)
        lo, hi = (np.percentile(b[ok], [2, 98]) if ok.any() else (0.0, 1.0))
        out[i] = np.clip((b - lo) / max(hi - lo, 1e-12), 0, 1)
        out[i][~ok] = np.nan
    return out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)


def _jsonable(obj):
    """Convert numpy scalars/arrays and non-finite floats for strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
