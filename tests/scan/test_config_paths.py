"""Every path of a scan file is taken from the file's folder, whatever the working directory.

The ``compare.explanations`` files and globs included (they were left relative to the
working directory: a scan run from elsewhere found none, or another folder's PNGs).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from pipelines import cli
from pipelines.options.compare import CompareConfig
from pipelines.options.predict import PredictConfig
from pipelines.scan import ScanConfig

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _scan_file(folder: Path, **changes) -> Path:
    doc = {"name": "paths", "region": "85,27,85.01,27.01",
           "source": {"kind": "synthetic", "world": "world"}, "model": "model", "out": "out",
           "periods": {"years": 2016}, "compare": {"figures": False}}
    doc.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_explanations_are_taken_from_the_scan_files_folder(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    _scan_file(cfg, compare={"explanations": ["shots/*.png", "../one.png"],
                                    "background": "hs.tif", "figures": False})
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "shots").mkdir(parents=True)  # a decoy where the working directory is
    monkeypatch.chdir(elsewhere)
    config = ScanConfig.from_yaml(str(Path("..") / "cfg" / "scan.yaml"))
    assert config.compare["explanations"] == [str(cfg / "shots" / "*.png"),
                                              str(tmp_path / "one.png")]
    assert config.compare["background"] == str(cfg / "hs.tif")
    compare = config.compare_config(config.periods[0])
    assert list(compare.explanations) == [str(cfg / "shots" / "*.png"),
                                          str(tmp_path / "one.png")]


def test_explanations_of_a_scan_file_in_a_bucket_stay_in_the_bucket():
    config = ScanConfig.from_dict(
        {"name": "paths", "region": "85,27,85.01,27.01",
         "source": {"kind": "earthengine", "project": "p"}, "model": "model",
         "out": "out", "periods": {"years": 2016},
         "compare": {"explanations": ["shots/*.png", "gs://other/x.png", "/abs/y.png"]}},
        base="gs://bucket/scans")
    assert config.compare["explanations"] == ["gs://bucket/scans/shots/*.png",
                                              "gs://other/x.png", "/abs/y.png"]


@pytest.mark.parametrize("cls, block", [(PredictConfig, "predict"), (CompareConfig, "compare")])
def test_every_path_option_of_a_block_is_taken_from_the_files_folder(cls, block):
    """Whatever path options the stage configurations gain, the scan resolves them all."""
    from pipelines.scan.config import _resolve_block

    paths = [f.name for f in dataclasses.fields(cls)
             if f.metadata.get("path") and f.metadata.get("yaml", True)]
    if block == "compare":
        assert {"background", "explanations"} <= set(paths)
    values = {name: "rel/x" for name in paths}
    out = _resolve_block(block, {**values, "other": "rel/y"}, cls, "/base")
    assert out == {**{name: "/base/rel/x" for name in paths}, "other": "rel/y"}


def test_a_scan_run_from_another_folder_shows_the_explanations(stub_scan, tmp_path,
                                                               monkeypatch):
    """End to end: the report of each period holds the scan folder's PNGs, not the
    working directory's (which holds a decoy of the same pattern)."""
    stub_scan.write_reference(2016)
    (stub_scan.folder / "shots").mkdir()
    (stub_scan.folder / "shots" / "gradcam.png").write_bytes(PNG)
    path = stub_scan.config(compare={"figures": False, "resolution": 10.0,
                                     "explanations": ["shots/*.png"]})
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "shots").mkdir(parents=True)
    (elsewhere / "shots" / "decoy.png").write_bytes(PNG)
    monkeypatch.chdir(elsewhere)
    assert cli.main(["scan", "--config", path]) == 0
    compare = stub_scan.out / "periods" / "2016" / "compare"
    metrics = json.loads((compare / "metrics.json").read_text())
    assert [f["title"] for f in metrics["figures"]["explain"]] == ["gradcam"]
    assert not [p for p in metrics["problems"] if "explanations" in p["message"]]
    assert sorted(p.name for p in (compare / "figures" / "explain").iterdir()) == [
        "000_gradcam.png"]
