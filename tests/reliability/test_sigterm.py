"""Issue 17: SIGTERM (what Dataflow and schedulers send) mid-sweep, then a resume.

The sweep stops promptly with exit 143 and says which chunk it finished and which it
abandoned; nothing half-written is left; the same command then completes it, byte for
byte as a sweep never interrupted.
"""

from __future__ import annotations

import json
import signal
import time

import geopandas as gpd
import numpy as np
import pytest

from pipelines.termination import EXIT_SIGTERM
from tests.reliability.conftest import (
    half_written,
    landslides,
    landslides_popen,
    predict_args,
    read_band,
    write_aoi,
    write_scene,
)

N_CHUNKS = 64  # 512 x 512 px in 64-px chunks: long enough to be stopped half way


@pytest.fixture(scope="module")
def wide_scene(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("rel_wide")
    return {"image": write_scene(d, 512), "aoi": write_aoi(d, 512)}


def _wait_for(cond, proc, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.poll() is None, f"the sweep ended (exit {proc.returncode}) too early"
        assert time.monotonic() < deadline, "the sweep wrote no chunk in time"
        time.sleep(0.01)


def _tree(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tif"))}


@pytest.mark.slow
def test_sigterm_mid_sweep_stops_cleanly_and_the_rerun_is_identical(
        threshold_model, wide_scene, tmp_path):
    out, full = tmp_path / "out", tmp_path / "full"
    args = predict_args(threshold_model, wide_scene["image"], wide_scene["aoi"], out)
    log = tmp_path / "terminated.log"
    proc = landslides_popen(*args, log=log)
    try:
        _wait_for(lambda: any((out / "done").glob("*.json")), proc, 120)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - t0
    text = log.read_text()
    assert code == EXIT_SIGTERM == 143, text[-3000:]
    assert took < 15, f"{took:.1f} s from SIGTERM to exit"
    assert "terminated by SIGTERM" in text
    # which chunk was in flight, and what became of it
    last = next(line for line in text.splitlines()
                if line.startswith("landslides predict: terminated by SIGTERM"))
    assert "finished: chunk " in last or "abandoned: chunk " in last, last
    assert "Traceback" not in text, text[-3000:]
    done = sorted((out / "done").glob("*.json"))
    assert 0 < len(done) < N_CHUNKS  # stopped half way, not after the end
    assert not (out / "run.json").exists()  # no finished-looking sweep
    assert half_written(out) == []  # no temp file, no done-record without its COGs
    for rec in done:  # every published chunk is whole: its COGs read
        for rel in json.loads(rec.read_text())["files"].values():
            assert read_band(out / rel).shape == (64, 64)

    resumed = landslides(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["chunks_skipped"] == len(done)
    assert run["counts"]["chunks_computed"] == N_CHUNKS - len(done)
    fresh = landslides(*predict_args(threshold_model, wide_scene["image"], wide_scene["aoi"],
                                     full))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    for sub in ("prob", "mask"):
        a, b = _tree(out / sub), _tree(full / sub)
        assert len(a) == N_CHUNKS and a.keys() == b.keys()
        assert [k for k in a if a[k] != b[k]] == []
    for name in ("prob.tif", "mask.tif"):
        np.testing.assert_array_equal(read_band(out / "mosaic" / name),
                                      read_band(full / "mosaic" / name))
    ga, gb = gpd.read_file(out / "inventory.gpkg"), gpd.read_file(full / "inventory.gpkg")
    assert len(ga) == len(gb) > 0
    assert ga["area_m2"].sum() == pytest.approx(gb["area_m2"].sum(), abs=1e-6)


@pytest.mark.slow
def test_sigterm_mid_scan_stops_cleanly_and_the_rerun_is_identical(
        threshold_model, wide_scene, tmp_path):
    """A scheduled scan stopped by SIGTERM in its first period's sweep exits 143, leaves
    that period not done, and the same command then completes the scan with the same
    chunk COGs and inventories as a scan never interrupted."""
    import yaml

    ref = tmp_path / "ref.gpkg"
    gpd.read_file(wide_scene["aoi"]).to_crs(32645).buffer(-2000).to_frame("geometry") \
        .to_file(ref)

    def config(out: str) -> str:
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump({
            "name": "rel", "region": str(wide_scene["aoi"]), "model": threshold_model,
            "source": {"kind": "geotiff", "images": [str(wide_scene["image"])]},
            "out": str(tmp_path / out), "periods": {"years": "2019-2020"},
            "reference": str(ref), "predict": {"chunk_size": 64},
            "compare": {"resolution": 10.0, "figures": False}}))
        return str(path)

    out = tmp_path / "scan"
    log = tmp_path / "terminated.log"
    proc = landslides_popen("scan", "--config", config("scan"), log=log)
    try:
        _wait_for(lambda: any(out.glob("periods/2019/sweep/done/*.json")), proc, 120)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == EXIT_SIGTERM, text[-3000:]
    assert "landslides scan: terminated by SIGTERM" in text and "Traceback" not in text
    assert not (out / "periods" / "2019" / "period.json").exists()  # not done
    assert half_written(out / "periods" / "2019" / "sweep") == []

    resumed = landslides("scan", "--config", config("scan"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fresh = landslides("scan", "--config", config("fresh"), timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    for period in ("2019", "2020"):
        a, b = (d / "periods" / period / "sweep" for d in (out, tmp_path / "fresh"))
        for sub in ("prob", "mask"):
            ta, tb = _tree(a / sub), _tree(b / sub)
            assert len(ta) == N_CHUNKS and ta == tb
        ga, gb = gpd.read_file(a / "inventory.gpkg"), gpd.read_file(b / "inventory.gpkg")
        assert len(ga) == len(gb) > 0
