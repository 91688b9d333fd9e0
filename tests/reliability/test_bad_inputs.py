"""Issue 17 through the real CLI: damaged inputs and outputs, mistyped options.

Each case asserts the exit code, the one-line message (naming the file and the fix, no
traceback) and that nothing stale or fake is left behind.
"""

from __future__ import annotations

import json
import time

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from tests.reliability.conftest import half_written, landslides, predict_args, read_band


def _truncate(src, dest, fraction: float) -> None:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])  # what `head -c` leaves


def _error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if "error:" in line][-1]


def test_truncated_image_fails_its_chunks_fast_and_permanently(threshold_model, small_scene,
                                                               tmp_path):
    """A COG cut short still opens (its header is first): the chunks that meet the missing
    tiles are dead-lettered as permanent, without retries, and the products say partial."""
    image, out = tmp_path / "s2.tif", tmp_path / "out"
    _truncate(small_scene["cog"], image, 0.6)
    t0 = time.monotonic()
    # a retry would wait at least 60 s (Beam's backoff fuzzes 120 s down to half at most):
    # the bound tells a retried run from a slow one on a loaded machine (22 s seen)
    proc = landslides(*predict_args(threshold_model, image, small_scene["aoi"], out,
                                    "--retries", "3", "--retry-delay", "120"), timeout=300)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert took < 60, f"{took:.1f} s: a corrupt file must not be retried"
    assert "retrying a chunk read" not in proc.stderr and "Traceback" not in proc.stderr
    failed = [json.loads(x) for x in (out / "failed_chunks.jsonl").read_text().splitlines()]
    assert 0 < len(failed) < 16
    assert {(f["class"], f["stage"], f["reason"]) for f in failed} == {
        ("permanent", "read", "SourceError")}
    assert all("s2.tif" in f["error"] for f in failed)
    assert f"{len(failed)} chunk(s) failed" in proc.stderr
    # nothing that looks complete, nothing of the failed chunks, nothing half-written
    assert not (out / "inventory.gpkg").exists() and (out / "inventory.partial.gpkg").exists()
    assert (out / "mosaic" / "prob.partial.tif").exists()
    assert not list(out.glob("mosaic/prob.tif")) and not list(out.glob("mosaic/mask.vrt"))
    for f in failed:
        assert not (out / "done" / f"{f['chunk']}.json").exists()
        assert not (out / "prob" / f"{f['chunk']}.tif").exists()
    assert half_written(out) == []
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "partial" and run["counts"]["chunks_failed"] == len(failed)


def test_truncated_image_without_its_header_is_refused_before_launch(
        threshold_model, small_scene, tmp_path):
    """A GeoTIFF whose directory was at its end cannot open at all: exit 2, one line."""
    image, out = tmp_path / "cut.tif", tmp_path / "out"
    _truncate(small_scene["image"], image, 0.6)
    proc = landslides(*predict_args(threshold_model, image, small_scene["aoi"], out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _error_line(proc)
    assert "cut.tif" in line and "valid GeoTIFF" in line
    assert not out.exists()


def test_truncated_dem_is_one_line_naming_it(tmp_path):
    from pipelines.geo.cog import write_cog
    from pipelines.geo.grid import PixelGrid

    grid = PixelGrid("EPSG:32645", (10.0, 0.0, 320000.0, 0.0, -10.0, 3120000.0), 200, 200)
    yy, xx = np.mgrid[0:200, 0:200]
    write_cog(str(tmp_path / "dem.tif"), (1000 + 3.0 * xx + 2.0 * yy).astype("float32"), grid,
              nodata=-9999.0)
    _truncate(tmp_path / "dem.tif", tmp_path / "dem_cut.tif", 0.5)
    proc = landslides("terrain", str(tmp_path / "dem_cut.tif"), "--out", str(tmp_path / "t"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _error_line(proc)
    assert "dem_cut.tif" in line and "truncated or corrupt" in line
    assert "export it again" in line
    assert not list(tmp_path.glob("t/*.tif"))  # no product of the damaged DEM
    ok = landslides("terrain", str(tmp_path / "dem.tif"), "--out", str(tmp_path / "t"))
    assert ok.returncode == 0 and (tmp_path / "t" / "slope.tif").exists()


def _overwrite_tail(path) -> None:
    """Bytes overwritten in place (same size): the done-record's size check passes."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


@pytest.mark.slow  # four sweeps as processes: about 30 s
def test_chunk_cog_damaged_since_it_was_written(threshold_model, small_scene, tmp_path):
    """A resume that merges a chunk COG damaged since: exit 2 naming it, the chunk is
    forgotten, and the same command then gives what a fresh sweep gives."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    args = predict_args(threshold_model, small_scene["image"], small_scene["aoi"], out)
    assert landslides(*args).returncode == 0
    victim = sorted((out / "prob").glob("*.tif"))[0]
    _overwrite_tail(victim)
    proc = landslides(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _error_line(proc)
    assert victim.name in line and "truncated or corrupt" in line
    assert "running the same command again" in line and "--overwrite" in line
    assert not (out / "done" / f"{victim.stem}.json").exists()  # not trusted again
    assert half_written(out) == []
    again = landslides(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["counts"]["chunks_computed"], run["counts"]["chunks_skipped"]) == (1, 15)
    assert landslides(*predict_args(threshold_model, small_scene["image"], small_scene["aoi"],
                                    fresh)).returncode == 0
    assert victim.read_bytes() == (fresh / "prob" / victim.name).read_bytes()
    np.testing.assert_array_equal(read_band(out / "mosaic" / "prob.tif"),
                                  read_band(fresh / "mosaic" / "prob.tif"))


def test_mistyped_option_is_refused_with_a_suggestion(threshold_model, small_scene, tmp_path):
    args = predict_args(threshold_model, small_scene["image"], small_scene["aoi"],
                        tmp_path / "out")
    args[args.index("--chunk-size")] = "--chunk-sise"
    proc = landslides(*args)
    assert proc.returncode == 2
    assert "--chunk-sise (did you mean --chunk-size?)" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_compare_with_a_missing_reference_year_exits_1(tmp_path):
    polys = [box(330000 + 100 * i, 3110000, 330000 + 100 * i + 60, 3110060) for i in range(5)]
    for year in (2015, 2016):
        gpd.GeoDataFrame(geometry=polys, crs="EPSG:32645").to_file(tmp_path / f"pred_{year}.gpkg")
    gpd.GeoDataFrame(geometry=polys[:4], crs="EPSG:32645").to_file(tmp_path / "ref_2015.gpkg")
    proc = landslides("compare", "--reference", str(tmp_path / "ref_{year}.gpkg"),
                      "--predicted", str(tmp_path / "pred_{year}.gpkg"), "--years",
                      "2015,2016", "--resolution", "10", "--no-figures", "--out",
                      str(tmp_path / "cmp"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "reference 2016" in proc.stderr
    m = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert m["missing_years"]["reference"] == ["2016"] and m["status"] == "partial"
    assert m["years"]["2015"]["pixel"]  # the year it could read is still scored


def test_an_unexpected_error_is_one_line_and_exit_70(tmp_path, capsys, monkeypatch):
    """An error none of ours (here a bug planted in the terrain command) is one line and
    exit 70 without -v, the full traceback with -v."""
    from pipelines import cli
    from pipelines import terrain as terrain_cmd

    def broken(options):
        raise ZeroDivisionError("division by zero in a planted bug")

    monkeypatch.setattr(terrain_cmd, "terrain_command", broken)
    args = ["terrain", str(tmp_path / "dem.tif"), "--out", str(tmp_path / "o")]
    assert cli.main(args) == 70
    err = capsys.readouterr().err
    assert "unexpected error: ZeroDivisionError: division by zero" in err
    assert "Traceback" not in err and "-v" in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["-v", *args])


@pytest.mark.parametrize("status", [403, 429])
def test_earth_engine_refusals_fail_fast_with_one_budget(tmp_path, monkeypatch, status):
    """An Earth Engine 403 over a 14-chunk sweep is not retried (one request per chunk) and
    ends in well under 20 s; a persistent 429 spends the configured budget
    (--ee-max-retries) once per chunk, never multiplied by the sweep's --retries."""
    import time

    from pipelines import cli
    from tests.ee_server import EEServer, Faults
    from tests.predict.test_predict import _save_threshold_model

    monkeypatch.setenv("LSM_TEST_EE_TOKEN", "test-token")
    model = _save_threshold_model(tmp_path / "thr", bands=("B1", "B2"), k=0.05, t=500.0,
                                  on="B1")
    out = tmp_path / "out"
    with EEServer() as server:
        server.configure(faults=Faults(status=status, every=1))
        t0 = time.monotonic()
        code = cli.main([
            "predict", "--model", model, "--out", str(out), "--source", "earthengine",
            "--ee-endpoint", server.url, "--ee-project", "test-project",
            "--ee-token-env", "LSM_TEST_EE_TOKEN", "--start", "2021-03-01",
            "--end", "2021-06-01", "--aoi", "85.300,28.100,85.309,28.106",
            "--chunk-size", "32", "--retries", "3", "--retry-delay", "0.5",
            "--ee-max-retries", "1"])
        took = time.monotonic() - t0
        requests = len(server.pixel_requests())
    assert code == 1
    failed = [json.loads(line) for line in (out / "failed_chunks.jsonl").read_text()
              .splitlines()]
    run = json.loads((out / "run.json").read_text())
    assert len(failed) == run["counts"]["chunks_failed"] == run["counts"]["chunks_total"] >= 9
    assert {f["class"] for f in failed} == {"permanent" if status == 403 else "transient"}
    # a chunk is one block here: 1 request for a 403, 1 + max_retries for a 429
    assert requests == len(failed) * (1 if status == 403 else 2)
    assert took < (20 if status == 403 else 60), f"{took:.1f} s"


def test_train_into_an_unwritable_folder_is_named_as_a_write_failure(tmp_path, capsys):
    """An --out that cannot be written is refused before training, as a write failure."""
    from pipelines import cli

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code = cli.main(["train", "--data", str(tmp_path / "no-shards"), "--out",
                     str(blocker / "model")])
    err = capsys.readouterr().err
    assert code == 2
    assert "file.txt" in err and "reading the data" not in err
