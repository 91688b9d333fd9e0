"""The scan's root STAC catalog, written by :func:`pipelines.geo.stac.write_stac_catalog`.

One item per done period (its comparison and inventory), a summary item (the trend table,
figures and page), and a child link to every period's sweep catalog.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from pipelines import fsio
from pipelines.geo.stac import StacAsset, StacItem, StacLink, write_stac_catalog
from pipelines.scan.config import RECORD, ScanConfig, _period_of
from pipelines.scan.plan import ScanInputs


def write_scan_stac(config: ScanConfig, inputs: ScanInputs, records: Sequence[dict],
                    summary_paths: Mapping[str, str]) -> str:
    """Write the root STAC catalog of the scan.

    One item per done period (its comparison and inventory), a summary item, and a child
    link to every period's sweep catalog.

    Hrefs are relative, so the output folder can be moved or served as it is.

    Returns:
        The path of ``out/stac/catalog.json``.
    """
    folder = fsio.join(config.out, "stac")
    geom = inputs.geometry
    items: list[StacItem] = []
    children: list[StacLink] = []
    for rec in records:
        p = _period_of(config, rec)
        pred = rec["stats"].get("predicted") or {}
        props = {"landslides:scan": config.name, "landslides:period": p.name,
                 "landslides:model_id": rec.get("model_id"),
                 "landslides:count": pred.get("count"),
                 "landslides:total_area_m2": pred.get("total_area_m2"),
                 "landslides:density_per_km2": pred.get("density_per_km2")}
        sweep = config.period_path(p, "sweep")
        comp = config.period_path(p, "compare")
        assets = {
            key: StacAsset(path, title, media, roles) for key, path, title, media, roles in (
                ("inventory_gpkg", fsio.join(sweep, "inventory.gpkg"), "Landslide polygons",
                 "application/geopackage+sqlite3", ("data",)),
                ("inventory_parquet", fsio.join(sweep, "inventory.parquet"),
                 "Landslide polygons (GeoParquet)", "application/vnd.apache.parquet", ("data",)),
                ("report", fsio.join(comp, "report.html"), "Comparison report", "text/html",
                 ("overview",)),
                ("metrics", fsio.join(comp, "metrics.json"), "Comparison metrics",
                 "application/json", ("metadata",)),
                ("stats", fsio.join(comp, "stats.csv"), "Inventory statistics", "text/csv",
                 ("metadata",)),
                ("record", config.period_path(p, RECORD), "Period record", "application/json",
                 ("metadata",)))}
        items.append(StacItem(f"period-{p.name}", None, assets,
                              {k: v for k, v in props.items() if v is not None},
                              geometry=geom, start=p.start, end=p.end))
        sweep_cat = (rec.get("sweep") or {}).get("stac")
        if sweep_cat and fsio.exists(sweep_cat):
            children.append(StacLink(sweep_cat, f"Sweep {p.name}"))
    if records:
        starts = [r["period"]["start"] for r in records]
        ends = [r["period"]["end"] for r in records]
        types = {".csv": "text/csv", ".json": "application/json", ".html": "text/html",
                 ".png": "image/png"}
        summary_assets = {}
        for fname, fpath in summary_paths.items():
            stem, ext = os.path.splitext(fname)
            summary_assets[stem] = StacAsset(
                fpath, fname, types.get(ext, "application/octet-stream"),
                ("overview",) if ext in (".png", ".html") else ("metadata",))
        items.append(StacItem("summary", None, summary_assets,
                              {"landslides:scan": config.name,
                               "landslides:periods": [r["period"]["name"] for r in records]},
                              geometry=geom, start=min(starts), end=max(ends)))
    return write_stac_catalog(
        folder, f"landslides-scan-{config.name}",
        f"Landslide scan {config.name}: predictions and comparisons per period, and their "
        f"trends.", items, None, None, title=f"Landslide scan {config.name}", links=children)


__all__ = ["write_scan_stac"]
