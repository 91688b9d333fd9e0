"""Figures and the HTML report of a comparison (``landslides compare``).

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
state, no display needed) and saved as PNG. :func:`render_html` turns the metrics dict of
:func:`pipelines.compare.run_compare` into one static, self-contained page: inline CSS,
no scripts, figures linked by relative paths, so the output folder can be opened in a
browser, zipped or served from a bucket as it is.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

#: Colours of the confusion classes (colour-blind safe).
COLORS = {"tp": "#1b9e77", "fn": "#7570b3", "fp": "#d95f02"}
SIDE_COLORS = {"reference": "#1f77b4", "predicted": "#d62728"}
DPI = 96


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _extent_km(bounds: Sequence[float]) -> tuple[float, float, float, float]:
    left, bottom, right, top = bounds
    return (left / 1e3, right / 1e3, bottom / 1e3, top / 1e3)


def _map_axes(ax, crs: str) -> None:
    ax.set_xlabel(f"Easting (km, {crs})" if crs else "Easting (km)")
    ax.set_ylabel("Northing (km)")
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False, style="plain")


# --------------------------------------------------------------------------- figures
def overlay_figure(classes: np.ndarray, bounds: Sequence[float], path: str,
                   background: np.ndarray | None = None, metrics: Mapping | None = None,
                   title: str = "", crs: str = "") -> str:
    """Map of true positives (green), misses (purple) and false alarms (orange).

    Args:
        classes: Overview classes (0 no landslide, 1 TP, 2 FN, 3 FP, 255 no data), as made
            by :class:`pipelines.compare.ConfusionOverview`.
        bounds: ``(left, bottom, right, top)`` of ``classes`` in metres.
        path: PNG to write.
        background: Optional ``(h, w)`` grey or ``(h, w, 3)`` RGB image in 0..1 on the same
            grid (hillshade or imagery), drawn underneath.
        metrics: Pixel metrics shown in the corner (precision, recall, F1, IoU).
        title: Figure title.
        crs: CRS label for the axes.

    Returns:
        ``path``.
    """
    h, w = classes.shape
    fig = Figure(figsize=(7.5, 7.5 * h / max(w, 1) + 0.8))
    ax = fig.add_subplot()
    ext = _extent_km(bounds)
    if background is not None:
        ax.imshow(background, extent=ext, cmap="gray" if background.ndim == 2 else None,
                  interpolation="bilinear", vmin=0, vmax=1)
    else:
        nodata = np.ma.masked_where(classes != 255, np.ones(classes.shape))
        ax.imshow(nodata, extent=ext, cmap=ListedColormap(["#dddddd"]), interpolation="nearest")
    show = np.ma.masked_where((classes == 0) | (classes == 255), classes)
    cmap = ListedColormap([COLORS["tp"], COLORS["fn"], COLORS["fp"]])
    ax.imshow(show, extent=ext, cmap=cmap, vmin=0.5, vmax=3.5, interpolation="nearest")
    _map_axes(ax, crs)
    ax.set_title(title)
    handles = [Patch(color=COLORS["tp"], label="true positive"),
               Patch(color=COLORS["fn"], label="miss (false negative)"),
               Patch(color=COLORS["fp"], label="false alarm (false positive)")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3,
              fontsize=8, frameon=False)
    if metrics:
        txt = "  ".join(f"{k} {metrics[k]:.2f}" for k in ("precision", "recall", "f1", "iou")
                        if metrics.get(k) is not None)
        ax.text(0.01, 0.01, txt, transform=ax.transAxes, fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    _save(fig, path)
    return path


def density_figure(maps: Mapping[str, np.ndarray], bounds: Sequence[float], path: str,
                   vmax: float | None = None, bandwidth_m: float | None = None,
                   title: str = "", aoi=None, crs: str = "") -> str:
    """Landslide-density maps (landslides/km2), one panel per inventory, one colour scale.

    Args:
        maps: ``{"reference": array, "predicted": array}`` (either may be absent).
        bounds: ``(left, bottom, right, top)`` of the maps in metres.
        path: PNG to write.
        vmax: Top of the colour scale (shared across figures when given).
        bandwidth_m: Kernel width, shown in the caption.
        title: Figure title.
        aoi: Optional area of interest (shapely, same CRS) outlined on each panel.
        crs: CRS label for the axes.
    """
    roles = [r for r in ("reference", "predicted") if r in maps]
    first = maps[roles[0]]
    h, w = first.shape
    fig = Figure(figsize=(5.2 * len(roles) + 1.0, 5.2 * h / max(w, 1) + 0.8))
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    top = vmax if vmax and vmax > 0 else max(float(m.max()) for m in maps.values()) or 1.0
    ext = _extent_km(bounds)
    im = None
    for ax, role in zip(axes, roles):
        im = ax.imshow(maps[role], extent=ext, cmap="magma_r", vmin=0.0, vmax=top,
                       interpolation="bilinear")
        if aoi is not None:
            for poly in getattr(aoi, "geoms", [aoi]):
                x, y = poly.exterior.xy
                ax.plot(np.asarray(x) / 1e3, np.asarray(y) / 1e3, color="#444444", lw=0.8)
        _map_axes(ax, crs)
        ax.set_title(role)
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="landslides / km²", shrink=0.85)
    cap = f" (Gaussian kernel, sigma = {bandwidth_m:.0f} m)" if bandwidth_m else ""
    fig.suptitle(f"{title}{cap}", fontsize=10)
    _save(fig, path)
    return path


def fad_figure(stats: Mapping[str, Mapping], path: str) -> str:
    """Frequency-area distributions (probability density vs area, log-log) per year.

    Args:
        stats: ``{role: {year: inventory_stats(...)}}``; one panel per role, one line per
            year, with the fitted power-law tail dashed.
    """
    roles = [r for r in ("reference", "predicted") if stats.get(r)]
    fig = Figure(figsize=(5.5 * max(len(roles), 1), 4.5))
    axes = fig.subplots(1, max(len(roles), 1), squeeze=False)[0]
    cmap = colormaps["viridis"]
    for ax, role in zip(axes, roles):
        years = list(stats[role])
        for i, year in enumerate(years):
            st = stats[role][year]
            fad = st.get("fad") or {}
            c = np.asarray(fad.get("centers_m2", []))
            d = np.asarray(fad.get("density", []))
            if not c.size:
                continue
            ok = d > 0
            color = cmap(i / max(len(years) - 1, 1))
            label = "all" if year is None else str(year)
            ax.loglog(c[ok], d[ok], "o-", ms=3, lw=1, color=color, label=label)
            if st.get("beta") and st.get("a_min_m2"):
                n, n_tail = st["count"], st["n_tail"]
                a0 = st["a_min_m2"]
                amax = st.get("max_area_m2") or a0 * 10
                xs = np.geomspace(a0, max(amax, a0 * 1.01), 20)
                # p(A) = (n_tail / n) * (beta - 1) / a0 * (A / a0)**-beta
                ys = n_tail / n * (st["beta"] - 1) / a0 * (xs / a0) ** -st["beta"]
                ax.loglog(xs, ys, "--", lw=1, color=color)
        ax.set_xlabel("Landslide area A (m²)")
        ax.set_ylabel("Probability density p(A) (1/m²)")
        ax.set_title(f"{role} (dashed: power-law tail fit)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return path


def scatter_figure(matches: pd.DataFrame, path: str) -> str:
    """Reference vs predicted area of matched landslides, log-log, with the 1:1 line."""
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.add_subplot()
    years = list(dict.fromkeys(matches["year"].astype(str)))
    cmap = colormaps["viridis"]
    for i, y in enumerate(years):
        m = matches[matches["year"].astype(str) == y]
        ax.scatter(m["ref_area_m2"], m["pred_area_m2"], s=12, alpha=0.75,
                   color=cmap(i / max(len(years) - 1, 1)), label=y)
    vals = np.concatenate([matches["ref_area_m2"].to_numpy(), matches["pred_area_m2"].to_numpy()])
    vals = vals[vals > 0]
    lo, hi = (vals.min() / 1.5, vals.max() * 1.5) if vals.size else (1.0, 10.0)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("Reference landslide area (m²)")
    ax.set_ylabel("Matched predicted area (m²)")
    ax.set_title("Matched landslides (best match by IoU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return path


def trends_figure(multi: Mapping, path: str) -> str:
    """Counts and total areas across years, reference vs prediction, peak year marked.

    ``multi`` may hold ``labels`` (``{x: tick label}``) and ``x_label`` for periods that
    are not calendar years (e.g. seasons of a scan, placed at 0, 1, 2...).
    """
    rows = multi["rows"]
    years = [r["year"] for r in rows]
    labels = multi.get("labels")
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "count", "Number of landslides"),
                           (axes[1], "total_area_m2", "Total landslide area (km²)")):
        scale = 1e-6 if key == "total_area_m2" else 1.0
        for role in ("reference", "predicted"):
            vals = [r.get(f"{role}_{key}") for r in rows]
            if all(v is None for v in vals):
                continue
            ys = [np.nan if v is None else v * scale for v in vals]
            ax.plot(years, ys, "o-", color=SIDE_COLORS[role], label=role)
        peak = (multi.get("peak_year") or {}).get("reference")
        if peak is not None:
            ax.axvspan(peak - 0.4, peak + 0.4, color="#ffd92f", alpha=0.35,
                       label=f"peak {labels[peak]}" if labels else f"peak year {peak}")
        ax.set_xlabel(multi.get("x_label", "Year"))
        ax.set_ylabel(label)
        ax.set_xticks(years, labels=[labels[y] for y in years] if labels else None)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    r = multi.get("pearson_count") or {}
    if r.get("r") is not None:
        fig.suptitle(f"Pearson r of counts {r['r']:.2f}, of total areas "
                     f"{(multi.get('pearson_total_area') or {}).get('r', float('nan')):.2f}",
                     fontsize=10)
    _save(fig, path)
    return path


# --------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
.status-ok{color:#1b7837}.status-partial{color:#b35806}.status-failed{color:#b2182b}
.problems li.error{color:#b2182b}.problems li.warning{color:#8c510a}
figure{display:inline-block;margin:.6em;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
code{background:#f5f5f5;padding:0 .2em}
"""


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return html.escape(str(v))


def _table(headers: Sequence[str] | None, rows: Sequence[Sequence], left: int = 1,
           left_cols: Sequence[int] = ()) -> str:
    """An HTML table; the first ``left`` columns and ``left_cols`` are left-aligned."""
    lcols = set(range(left)) | set(left_cols)

    def cls(i: int) -> str:
        return ' class="l"' if i in lcols else ""

    head = ("<thead><tr>" + "".join(f"<th{cls(i)}>{html.escape(h)}</th>"
                                    for i, h in enumerate(headers)) + "</tr></thead>"
            if headers else "")
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_fmt(v)}</td>" for i, v in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _figures(items: Sequence[Mapping]) -> str:
    return "".join(
        f'<figure><a href="{html.escape(f["path"])}"><img src="{html.escape(f["path"])}" '
        f'alt="{html.escape(f["title"])}"></a><figcaption>{html.escape(f["title"])}'
        f"</figcaption></figure>" for f in items)


def render_html(metrics: Mapping, stats_rows: Sequence[Mapping], config: Mapping) -> str:
    """The report page: summary, problems, metrics, statistics, trends and figures.

    Args:
        metrics: The metrics dict of :func:`pipelines.compare.run_compare` (with
            ``figures`` and ``outputs``).
        stats_rows: The rows of ``stats.csv``.
        config: The configuration as a dict.

    Returns:
        The HTML text (UTF-8, no external resources besides the relative figure paths).
    """
    e = html.escape
    status = str(metrics.get("status", "?"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Landslide inventory comparison</title>", f"<style>{CSS}</style></head><body>",
        "<h1>Landslide inventory comparison</h1>",
        _table(None, [
            ["status", f"{status}"],
            ["mode", metrics.get("mode")],
            ["reference", config.get("reference")],
            ["predicted", config.get("predicted") or "(statistics only)"],
            ["area of interest", config.get("aoi") or "(union of the inputs' extents)"],
            ["years", ", ".join(str(y) for y in config.get("years") or []) or "(single)"],
            ["CRS", f"{metrics.get('crs')} ({metrics.get('crs_reason')})"],
            ["pixel grid", f"{metrics.get('resolution_m')} m"],
            ["object matching", f"{config.get('match')} ≥ {config.get('min_overlap')}"],
            ["density area", f"{_fmt((metrics.get('density_area') or {}).get('area_km2'))} km² "
                             f"({(metrics.get('density_area') or {}).get('basis')})"],
        ], left=2).replace(f'<td class="l">{e(status)}</td>',
                           f'<td class="l status-{e(status)}">{e(status)}</td>', 1),
    ]
    notes = config.get("notes") or []
    if notes:
        parts.append("<h2>About this comparison</h2>")
        parts.append('<ul class="notes">' + "".join(f"<li>{e(str(n))}</li>" for n in notes)
                     + "</ul>")
    if config.get("observed_only") and config.get("predicted"):
        parts.append("<p>Where a prediction is a raster with nodata, only pixels it observed "
                     "are scored, and reference landslides at least half outside them are "
                     "neither matched nor counted; nor are predicted landslides found on "
                     "them (the inputs table gives how many per year).</p>")
    probs = metrics.get("problems") or []
    parts.append("<h2>Problems</h2>")
    if probs:
        parts.append('<ul class="problems">' + "".join(
            f'<li class="{e(p["level"])}"><b>{e(p["level"])}</b> '
            f'{e(" ".join(str(v) for v in (p.get("side"), p.get("year")) if v is not None))}: '
            f'{e(p["message"])}</li>' for p in probs) + "</ul>")
    else:
        parts.append("<p>None.</p>")

    years = metrics.get("years") or {}
    pix_rows, obj_rows = [], []
    for y, entry in years.items():
        p, o = entry.get("pixel"), entry.get("object")
        if p:
            pix_rows.append([y, p["precision"], p["recall"], p["f1"], p["iou"], p["tp_area_m2"],
                             p["fp_area_m2"], p["fn_area_m2"]])
        if o:
            obj_rows.append([y, o["n_reference"], o["n_predicted"], o["n_found"],
                             o["n_false_alarms"], o["precision"], o["recall"], o["f1"],
                             o["fragmentation"], o["merges"]])
    if pix_rows:
        parts += ["<h2>Pixel (area) metrics</h2>",
                  _table(["year", "precision", "recall", "F1", "IoU", "TP area (m²)",
                          "FP area (m²)", "FN area (m²)"], pix_rows)]
    if obj_rows:
        parts += ["<h2>Object metrics</h2>",
                  _table(["year", "reference", "predicted", "found", "false alarms",
                          "precision", "recall", "F1", "fragmentation", "merges"], obj_rows),
                  "<p>Fragmentation: predicted polygons per found landslide; merges: predicted "
                  "polygons covering two or more reference landslides.</p>"]
    if stats_rows:
        parts += ["<h2>Statistics per inventory and year</h2>", _table(
            ["inventory", "year", "count", "total area (m²)", "min (m²)", "max (m²)",
             "density (/km²)", "rollover (m²)", "β (tail)", "invalid repaired", "notes"],
            [[r["inventory"], r["year"], r["count"], r["total_area_m2"], r["min_area_m2"],
              r["max_area_m2"], r["density_per_km2"], r["rollover_m2"], r["beta"],
              r["n_invalid_repaired"], r["notes"]] for r in stats_rows], left=2,
            left_cols=[10])]
    multi = metrics.get("multitemporal")
    if multi and multi.get("rows"):
        keys = [k for k in multi["rows"][0] if k != "year"]
        parts += ["<h2>Across years</h2>",
                  _table(["year", *[k.replace("_", " ") for k in keys]],
                         [[str(r["year"]), *[r.get(k) for k in keys]] for r in multi["rows"]])]
        for name in ("pearson_count", "pearson_total_area"):
            r = multi.get(name)
            if r is not None:
                val = (f"r = {r['r']:.3f} (p = {r['p_value']:.3g}, n = {r['n']})"
                       if r.get("r") is not None else e(r.get("note", "")))
                parts.append(f"<p>Pearson correlation of {e(name[8:].replace('_', ' '))}s "
                             f"across years: {val}</p>")
        # a side that is the same inventory every year has no peak year (None)
        peak = {k: v for k, v in (multi.get("peak_year") or {}).items() if v is not None}
        if peak:
            parts.append("<p>Peak year: " + ", ".join(f"{e(k)} {e(str(v))}"
                                                       for k, v in peak.items()) + "</p>")
    figs = metrics.get("figures") or {}
    for key, heading in (("overlay", "Overlay maps"), ("density", "Landslide density"),
                         ("other", "Distributions and trends")):
        if figs.get(key):
            parts += [f"<h2>{heading}</h2>", _figures(figs[key])]
    if figs.get("explain"):
        parts += ["<h2>What the model looks at (Grad-CAM)</h2>",
                  "<p>Grad-CAM heat maps from <code>landslides explain</code>: where the "
                  "feature maps of one layer push the model's score (a classifier's "
                  "landslide logit, or a U-Net's landslide probability summed over its "
                  "predicted pixels) up; bright is strong. They show what the model "
                  "attends to, not where landslides are.</p>", _figures(figs["explain"])]
    parts.append("<h2>Inputs</h2>")
    inp_rows = []
    for role, per in (metrics.get("inputs") or {}).items():
        for y, rep in per.items():
            # reference: under the prediction's no data; predicted: on those landslides or
            # where a reference raster holds no label (older metrics: n_on_unobserved)
            unobserved = rep.get("n_unobserved", rep.get("n_left_out",
                                                         rep.get("n_on_unobserved")))
            compared = rep.get("n_compared")
            if unobserved is not None and compared is not None:
                compared = compared - unobserved  # what was scored and counted
            inp_rows.append([role, y, rep.get("path"), rep.get("kind"), rep.get("n_read"),
                             rep.get("n_invalid_repaired"), rep.get("n_empty"), unobserved,
                             compared, rep.get("reprojected_from"), rep.get("error")])
    if inp_rows:
        parts.append(_table(["inventory", "year", "file", "kind", "features read",
                             "invalid repaired", "empty dropped", "unobserved", "compared",
                             "reprojected from", "error"], inp_rows, left=4, left_cols=[9, 10]))
    missing = {k: v for k, v in (metrics.get("missing_years") or {}).items() if v}
    if missing:
        parts.append("<p>Missing years: " + "; ".join(
            f"{e(k)}: {e(', '.join(v))}" for k, v in missing.items()) + "</p>")
    files = [f for f in metrics.get("outputs", []) if not f.startswith("figures/")]
    parts.append("<h2>Files</h2><ul>" + "".join(
        f'<li><a href="{e(f)}">{e(f)}</a></li>' for f in files) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = [
    "density_figure",
    "fad_figure",
    "overlay_figure",
    "render_html",
    "scatter_figure",
    "trends_figure",
]
