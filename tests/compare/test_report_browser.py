"""The comparison report in a real browser: headless Chromium loads every figure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from matplotlib.image import imread
from shapely.geometry import box

from pipelines.compare import CompareConfig, run_compare
from pipelines.geo.cog import write_cog
from pipelines.geo.grid import PixelGrid
from pipelines.geo.terrain import hillshade

UTM = "EPSG:32645"
X0, Y0 = 330_000.0, 3_110_000.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Appended to a copy of the page: after the load event, record every image's state in
#: the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (img) {
    out.push({src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0,
              width: img.naturalWidth, height: img.naturalHeight});
  });
  var pre = document.createElement("pre");
  pre.id = "img-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def synthetic_inputs(tmp: Path, rng: np.random.Generator) -> tuple[str, str, str]:
    """Three years of reference/predicted polygons and a hillshade background COG."""
    for y, n in ((2014, 12), (2015, 40), (2016, 20)):
        xy = rng.uniform(100, 2900, size=(n, 2))
        wh = rng.uniform(20, 120, size=(n, 2))
        ref = [box(X0 + x, Y0 - yy - h, X0 + x + w, Y0 - yy) for (x, yy), (w, h) in zip(xy, wh)]
        # The prediction: shifted by 10 m, misses a few, adds a few false alarms.
        pred = [box(X0 + x + 10, Y0 - yy - h, X0 + x + w + 10, Y0 - yy)
                for (x, yy), (w, h) in zip(xy[3:], wh[3:])]
        pred += [box(X0 + x, Y0 - yy - 40, X0 + x + 40, Y0 - yy)
                 for x, yy in rng.uniform(100, 2900, size=(3, 2))]
        gpd.GeoDataFrame(geometry=ref, crs=UTM).to_file(tmp / f"ref_{y}.gpkg")
        gpd.GeoDataFrame(geometry=pred, crs=UTM).to_file(tmp / f"pred_{y}.gpkg")
    res = 30.0
    grid = PixelGrid(UTM, (res, 0.0, X0 - 300, 0.0, -res, Y0 + 300), 120, 120)
    yy, xx = np.mgrid[0:120, 0:120] * res
    dem = 2000 + 400 * np.sin(xx / 900.0) * np.cos(yy / 700.0) + 0.2 * yy
    shade = hillshade(dem, res)
    shade = np.where(np.isfinite(shade), shade, 0).astype("uint8")
    write_cog(str(tmp / "hillshade.tif"), shade, grid, nodata=0, overviews=False)
    return (str(tmp / "ref_{year}.gpkg"), str(tmp / "pred_{year}.gpkg"),
            str(tmp / "hillshade.tif"))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    ref, pred, bg = synthetic_inputs(tmp, np.random.default_rng(7))
    m = run_compare(CompareConfig(reference=ref, predicted=pred, years=(2014, 2015, 2016),
                                  out=str(tmp / "out"), resolution=5.0, background=bg))
    assert m["status"] == "ok"
    return tmp / "out"


def test_report_is_static_and_links_every_output(report_dir):
    page = (report_dir / "report.html").read_text()
    parser = _Imgs()
    parser.feed(page)
    figs = sorted(p.relative_to(report_dir).as_posix() for p in report_dir.glob("figures/*.png"))
    assert sorted(parser.srcs) == figs
    assert {"figures/overlay_2015.png", "figures/density_2015.png", "figures/trends.png",
            "figures/area_scatter.png", "figures/frequency_area.png"} <= set(figs)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for name in ("metrics.json", "stats.csv", "matches.csv", "compare_config.json"):
        assert f'href="{name}"' in page and (report_dir / name).exists()
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["multitemporal"]["pearson_count"]["r"] is not None
    # The values in the tables are the ones in metrics.json.
    f1 = metrics["years"]["2015"]["pixel"]["f1"]
    assert f"{f1:.3g}" in page or f"{f1:.2f}" in page


def test_overlay_draws_the_hillshade_background(report_dir):
    img = imread(report_dir / "figures" / "overlay_2015.png")[..., :3]
    non_white = (img.min(axis=-1) < 0.95).mean()
    # Landslides cover a few % of the map: only a background makes most pixels non-white.
    assert non_white > 0.4


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium)")
def test_report_figures_load_in_headless_chromium(report_dir, tmp_path):
    page = (report_dir / "report.html").read_text()
    n_figures = page.count("<img ")
    assert n_figures >= 7
    # A copy beside the original (same relative paths) with the probe and, as a control
    # that the probe can fail, one image whose file does not exist.
    probe = page.replace("</body>", '<img src="figures/no-such-figure.png" alt="control">'
                         + PROBE + "</body>")
    check = report_dir / "_browser_check.html"
    check.write_text(probe)
    try:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               "--dump-dom", check.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    finally:
        check.unlink()
    m = re.search(r'<pre id="img-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no probe output from chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    images = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == n_figures + 1
    loaded = {i["src"]: i for i in images}
    assert loaded["figures/no-such-figure.png"]["ok"] is False
    figs = [i for i in images if i["src"] != "figures/no-such-figure.png"]
    bad = [i["src"] for i in figs if not i["ok"]]
    assert not bad, f"figures that did not load in chromium: {bad}"
    assert all(i["width"] > 200 and i["height"] > 200 for i in figs)
