"""The scan's summary: ``out/summary/`` (trend table, figures, HTML page) and its STAC.

Rebuilt after every run from the done-records of all configured periods:
``trends.csv``/``trends.json`` from :func:`pipelines.scan.trends.trend_table`, the trend
and frequency-area figures, ``summary.html``, then the root STAC catalog
(:func:`pipelines.scan.stac.write_scan_stac`).
"""

from __future__ import annotations

import html
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import fsio
from pipelines.geo.stac import link_href
from pipelines.scan.config import FORMAT, RECORD, Period, ScanConfig, _now, _period_of
from pipelines.scan.plan import ScanInputs, load_record, period_fingerprint
from pipelines.scan.stac import write_scan_stac
from pipelines.scan.trends import TREND_COLUMNS, _finite, trend_table

log = logging.getLogger(__name__)


def update_summary(config: ScanConfig, inputs: ScanInputs) -> dict:
    """Rebuild ``out/summary/`` and ``out/stac/`` from every done period of the scan.

    Returns:
        ``{"done": [names], "paths": {name: path}, "stac": catalog path}``.
    """
    from pipelines import report as rpt

    records: list[dict] = []
    pending: list[Period] = []
    for p in sorted(config.periods, key=lambda p: (p.start, p.name)):
        rec = load_record(config, p, period_fingerprint(config, p, inputs))
        if rec:
            records.append(rec)
        else:
            pending.append(p)
    table = trend_table(records, bool(config.reference), config.static_reference)
    folder = fsio.join(config.out, "summary")
    figures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="landslides-scan-") as stage:
        if table["multitemporal"]["rows"]:
            try:
                rpt.trends_figure(table["multitemporal"], os.path.join(stage, "trends.png"))
                figures.append({"path": "trends.png", "title": "Landslides per period"})
            except Exception as exc:  # a figure must not lose the summary
                log.warning("Trend figure not drawn: %s", exc)
        fad = {"predicted": {r["period"]["name"]: r["stats"]["predicted"] for r in records
                             if r["stats"].get("predicted")}}
        if config.reference:
            fad["reference"] = {r["period"]["name"]: r["stats"]["reference"] for r in records
                                if r["stats"].get("reference")}
        if any(fad.values()):
            try:
                rpt.fad_figure(fad, os.path.join(stage, "frequency_area.png"))
                figures.append({"path": "frequency_area.png",
                                "title": "Frequency-area distributions per period"})
            except Exception as exc:
                log.warning("Frequency-area figure not drawn: %s", exc)
        summary = {
            "format": FORMAT, "scan": config.name, "updated": _now(),
            "model_id": inputs.model_id, "region": config.region,
            "mode": "comparison" if config.reference else "stats-only",
            # a reference without {year}/{period}: one inventory in every period's row
            "reference_same_every_period": config.static_reference,
            "periods_done": [r["period"]["name"] for r in records],
            "periods_not_done": [p.name for p in pending],
            "rows": table["rows"], "correlations": table["correlations"],
            "peak_period": _peak(table["rows"]),
            "figures": figures,
            "periods": {r["period"]["name"]: {"report": r["compare"]["report"],
                                              "sweep_stac": r["sweep"].get("stac"),
                                              "record": config.period_path(
                                                  _period_of(config, r), RECORD)}
                        for r in records},
        }
        files = {"trends.csv": fsio.csv_bytes(table["rows"], TREND_COLUMNS),
                 "trends.json": json.dumps(_finite(summary), indent=2).encode("utf-8"),
                 "summary.html": render_summary_html(config, summary).encode("utf-8")}
        for name, data in files.items():
            Path(stage, name).write_bytes(data)
        fsio.makedirs(folder)
        for rel in [f["path"] for f in figures] + ["trends.csv", "trends.json", "summary.html"]:
            fsio.put_file(os.path.join(stage, rel), fsio.join(folder, rel))
    paths = {name: fsio.join(folder, name) for name in
             ["trends.csv", "trends.json", "summary.html"] + [f["path"] for f in figures]}
    stac = write_scan_stac(config, inputs, records, paths)
    log.info("Summary of %d done period(s) in %s; STAC catalog %s", len(records), folder, stac)
    return {"done": summary["periods_done"], "paths": paths, "stac": stac}


def _peak(rows: Sequence[dict]) -> str | None:
    counted = [r for r in rows if r.get("predicted_count") is not None]
    return max(counted, key=lambda r: r["predicted_count"])["period"] if counted else None


def render_summary_html(config: ScanConfig, summary: Mapping) -> str:
    """A small static page: the trend table, correlations, figures and links per period."""
    from pipelines.report import CSS

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape(str(v))

    cols = [("period", "Period"), ("start", "Start"), ("end", "End (excl.)"),
            ("predicted_count", "Landslides"), ("predicted_total_area_m2", "Area (m²)"),
            ("predicted_density_per_km2", "Density (/km²)"),
            ("predicted_count_change", "Change")]
    if summary["mode"] == "comparison":
        cols += [("reference_count", "Reference landslides"),
                 ("reference_total_area_m2", "Reference area (m²)"),
                 ("diff_count", "Difference"), ("pixel_f1", "Pixel F1"),
                 ("object_f1", "Object F1")]
    cols += [("valid_km2", "Imaged km²")]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols) + "<th>Report</th>"
    body = []
    for r in summary["rows"]:
        link = summary["periods"].get(r["period"], {}).get("report")
        rel = link_href(link, fsio.join(config.out, "summary")) if link else None
        cells = "".join(f"<td>{fmt(r.get(k))}</td>" for k, _ in cols)
        a = f'<a href="{html.escape(rel)}">report</a>' if rel else "-"
        body.append(f"<tr>{cells}<td>{a}</td></tr>")
    corr = "".join(
        f"<li>{html.escape(k.replace('_', ' '))}: "
        + (f"r = {v['r']:.3f} (p = {v['p_value']:.3g}, n = {v['n']})" if v.get("r") is not None
           else html.escape(str(v.get("note") or "undefined")))
        + "</li>" for k, v in summary["correlations"].items())
    figs = "".join(
        f'<figure><a href="{html.escape(f["path"])}"><img src="{html.escape(f["path"])}" '
        f'alt="{html.escape(f["title"])}"></a><figcaption>{html.escape(f["title"])}'
        f"</figcaption></figure>" for f in summary["figures"])
    pending = summary["periods_not_done"]
    same = (f"<p>The reference <code>{html.escape(str(config.reference))}</code> holds no "
            f"{{year}} or {{period}}: it is the same inventory in every period, so its "
            f"columns repeat one inventory and it has no trend or correlation.</p>"
            if summary.get("reference_same_every_period") else "")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Landslide scan {html.escape(config.name)}</title><style>{CSS}</style>"
        "</head><body>"
        f"<h1>Landslide scan: {html.escape(config.name)}</h1>"
        f"<p>Model <code>{html.escape(str(summary['model_id']))}</code>, region "
        f"<code>{html.escape(config.region)}</code>, {len(summary['rows'])} period(s) done"
        f"{', not done: ' + html.escape(', '.join(pending)) if pending else ''}. "
        f"Updated {html.escape(summary['updated'])}. Mode: {html.escape(summary['mode'])}"
        f"{' (statistics of the predicted inventories)' if summary['mode'] == 'stats-only' else ''}"
        ".</p>"
        f"<h2>Trends</h2>{same}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
        f"</table><h2>Correlations</h2><ul>{corr}</ul><h2>Figures</h2>{figs or '<p>-</p>'}"
        "<p>Data: <a href=\"trends.csv\">trends.csv</a>, <a href=\"trends.json\">trends.json"
        "</a>; STAC catalog: <a href=\"../stac/catalog.json\">stac/catalog.json</a>.</p>"
        "</body></html>")


__all__ = [
    "render_summary_html",
    "update_summary",
]
