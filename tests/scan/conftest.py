"""A scan on a tiny region whose sweeps are stubbed: they take seconds, not minutes.

``stub_scan`` writes a region file and a scan file, makes the scan read the region but
no model (its inputs are computed from the region file, as ``check_inputs`` does), and
replaces the sweep by a function that writes what a finished sweep leaves (a one-polygon
inventory and ``run.json``) and counts its calls. Comparisons are the real ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
import yaml
from shapely.geometry import box

MODEL_ID = "model-1"
#: A landslide inside the region, in every inventory (predicted and reference)
LANDSLIDE = box(85.005, 27.005, 85.006, 27.006)


@dataclass
class StubScan:
    """The files of a stubbed scan and the sweeps it ran."""

    folder: Path
    sweeps: list[str] = field(default_factory=list)

    @property
    def region(self) -> Path:
        return self.folder / "region.geojson"

    @property
    def out(self) -> Path:
        return self.folder / "out"

    def write_region(self, east: float) -> None:
        """The region: 85.0 .. ``east`` E, 27.0 .. 27.02 N."""
        frame = gpd.GeoDataFrame(geometry=[box(85.0, 27.0, east, 27.02)], crs="EPSG:4326")
        self.region.write_text(frame.to_json())

    def write_reference(self, year: int) -> None:
        gpd.GeoDataFrame(geometry=[LANDSLIDE], crs="EPSG:4326").to_file(
            self.folder / f"ref_{year}.gpkg")

    def config(self, name: str = "scan", **changes: Any) -> str:
        """Write a scan file (``changes`` replace its keys); returns its path."""
        doc: dict[str, Any] = {
            "name": "tiny", "region": "region.geojson", "model": "model", "out": "out",
            "periods": {"years": 2016}, "reference": "ref_{year}.gpkg",
            "source": {"kind": "synthetic", "world": "world"},
            "compare": {"figures": False, "resolution": 10.0}}
        doc.update(changes)
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return str(path)

    def scan_record(self) -> dict:
        return json.loads((self.out / "scan.json").read_text())


@pytest.fixture
def stub_scan(tmp_path, monkeypatch) -> StubScan:
    import pipelines.predict
    import pipelines.scan.run
    from pipelines.geo.grid import load_region
    from pipelines.scan.plan import ScanInputs

    scan = StubScan(tmp_path)
    scan.write_region(85.02)

    def inputs(config):
        region = load_region(config.region)
        return ScanInputs(MODEL_ID, hashlib.sha256(region.wkb).hexdigest(), region.wkb, None)

    def run_predict(config, beam_args=None):
        scan.sweeps.append(config.out)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        gpd.GeoDataFrame(geometry=[LANDSLIDE], crs="EPSG:4326").to_file(out / "inventory.gpkg")
        run = {"status": "ok", "model": {"model_id": MODEL_ID}, "config": config.to_dict(),
               "counts": {"polygons": 1},
               "timings": {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}}
        (out / "run.json").write_text(json.dumps(run))
        return [run]

    monkeypatch.setattr(pipelines.scan.run, "check_inputs", inputs)
    monkeypatch.setattr(pipelines.predict, "run_predict", run_predict)
    return scan
