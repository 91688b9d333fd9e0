"""Finalize on a rerun into the same folder: nothing of the earlier run passes for this one.

The first run (a model with Grad-CAM, STAC on, merged COGs) writes every product; the
second, with another model, no STAC, mosaics too large to merge and no ``--explain``,
must leave none of the first run's products it did not write, and no file of the user's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines import fsio
from pipelines.predict import PredictConfig, run_predict

#: Files a user keeps beside the products: finalize must leave them alone.
USER_FILES = ("stac/notes.md", "stac/mine/mine.json", "mosaic/hillshade.tif",
              "mosaic/prob_notes.txt", "explain/README.txt")
CHUNK_ITEM = re.compile(r"stac/(\d+_r\d+_c\d+)/\1\.json")


def _config(scene: dict, out: str, **kw) -> PredictConfig:
    args = dict(model=scene["thr"], out=out, aoi=scene["aoi"],
                source={"kind": "geotiff", "images": [scene["tif"]]},
                start="2020-06-01", end="2020-09-30", chunk_size=32, retries=0)
    args.update(kw)
    return PredictConfig(**args)


def _files(out: str) -> set[str]:
    """Every file under ``out``, relative to it (local paths and gs:// alike)."""
    if fsio.is_remote(out):
        return {p.split(f"{out}/", 1)[1] for p in fsio.glob(f"{out}/**")}
    return {p.relative_to(out).as_posix() for p in Path(out).rglob("*") if p.is_file()}


def _rerun_with_less(scene: dict, out: str) -> tuple[dict, dict, set[str], set[str]]:
    first = run_predict(_config(scene, out, model=scene["explainable"], explain=True))[0]
    before = _files(out)
    for name in USER_FILES:
        fsio.write_bytes(fsio.join(out, name), b"the user's own")
    second = run_predict(_config(scene, out, stac=False, merge_max_px=1000))[0]
    return first, second, before, _files(out)


def _check(first: dict, second: dict, before: set[str], after: set[str]) -> None:
    assert second["model"]["model_id"] != first["model"]["model_id"]
    items = {p for p in before if CHUNK_ITEM.fullmatch(p)}
    explains = {p for p in before if p.startswith("explain/")}
    old = {"stac/catalog.json", "stac/mosaic/mosaic.json", "mosaic/prob.tif",
           "mosaic/mask.tif", "mosaic/explain.vrt", "mosaic/explain.tif", *items, *explains}
    assert old <= before and len(items) == len(explains) == 4  # the first run wrote them
    assert not old & after, sorted(old & after)
    assert set(USER_FILES) <= after
    assert {p for p in after if p.startswith(("stac/", "explain/"))} <= set(USER_FILES)
    mosaics = {p for p in after if p.startswith("mosaic/")} - set(USER_FILES)
    assert mosaics == {"mosaic/prob.vrt", "mosaic/mask.vrt"}  # 64 x 64 px > 1000 px
    assert set(second["outputs"]) == {"inventory", "mosaics", "run"}


def test_a_rerun_leaves_no_stac_merged_cog_or_gradcam_of_the_earlier_run(tiny_scene,
                                                                         tmp_path):
    _check(*_rerun_with_less(tiny_scene, str(tmp_path / "out")))
    assert not (tmp_path / "out" / "stac" / "mosaic").exists()  # emptied folders go too


def test_a_rerun_into_a_bucket_removes_the_leftovers_there_too(tiny_scene, gcs_bucket):
    _check(*_rerun_with_less(tiny_scene, f"{gcs_bucket}/sweep"))


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_leftovers_of_a_folder_named_with_glob_characters_leave_other_sweeps_alone(
        where, tmp_path, request):
    from pipelines.predict.records import MOSAIC_FILE, remove_leftovers, remove_stac

    base = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    others = ["nepal1/mosaic/prob.tif", "nepal2/mosaic/mask.tif",
              "nepal1/stac/mosaic/mosaic.json"]
    for name in ["nepal[12]/mosaic/prob.tif", "nepal[12]/stac/mosaic/mosaic.json", *others]:
        fsio.write_bytes(fsio.join(base, *name.split("/")), b"x")
    sweep = fsio.join(base, "nepal[12]")
    removed = remove_leftovers(fsio.join(sweep, "mosaic"),
                               lambda n: bool(MOSAIC_FILE.fullmatch(n)))
    assert removed == [fsio.join(sweep, "mosaic", "prob.tif")]
    assert remove_stac(fsio.join(sweep, "stac")) == [
        fsio.join(sweep, "stac", "mosaic", "mosaic.json")]
    assert fsio.glob(fsio.join(base, "**")) == sorted(
        fsio.join(base, *n.split("/")) for n in others)


# ----------------------------------------------------------------------------- chunks
#: A chunk product predict writes: ``prob|mask|explain/<key>.tif``, ``done/<key>.json``,
#: ``stac/<key>/<key>.json``.
CHUNK_PRODUCT = re.compile(r"(prob|mask|explain)/(\d+_r\d+_c\d+)\.tif|done/(\d+_r\d+_c\d+)\.json"
                           r"|stac/(\d+_r\d+_c\d+)/\4\.json")
#: Files a user keeps beside the chunk products, named like them but not them.
USER_CHUNK_FILES = ("prob/32645_r21501_c1001.txt", "done/notes.json", "mask/32645_r21501_c1001",
                    "stac/32645_r21501_c1001/notes.json", "explain/32645_r9_c9.tif.aux.xml")


def _chunk_products(files: set[str]) -> dict[str, set[str]]:
    """``{key: {kind}}`` of the chunk products among ``files`` (``stac`` for an item)."""
    out: dict[str, set[str]] = {}
    for path in files:
        m = CHUNK_PRODUCT.fullmatch(path)
        if m:
            kind = m.group(1) or ("done" if m.group(3) else "stac")
            out.setdefault(m.group(2) or m.group(3) or m.group(4), set()).add(kind)
    return out


def _model_id(path: Path) -> str:
    import rasterio

    with rasterio.open(path) as src:
        return src.tags()["model_id"]


def test_a_rerun_over_a_smaller_aoi_leaves_no_chunk_product_outside_it(tiny_scene, tmp_path):
    """Same dates, a one-chunk AOI and another model: the other three chunks' COGs,
    done-records and STAC items of the first run would pass for this run's."""
    import geopandas as gpd
    from shapely.geometry import box

    from tests.predict.conftest import TINY_GRID, TINY_LEFT, TINY_TOP

    out = tmp_path / "out"
    first = run_predict(_config(tiny_scene, str(out), model=tiny_scene["explainable"],
                                explain=True))[0]
    before = _chunk_products(_files(str(out)))
    assert len(before) == 4 and all(k == {"prob", "mask", "explain", "done", "stac"}
                                    for k in before.values())
    for name in USER_CHUNK_FILES:
        fsio.write_bytes(str(out / name), b"the user's own")
    small = tmp_path / "small.geojson"
    gpd.GeoDataFrame(geometry=[box(TINY_LEFT + 1, TINY_TOP - 319, TINY_LEFT + 319,
                                   TINY_TOP - 1)], crs=TINY_GRID.crs).to_crs(4326).to_file(small)
    second = run_predict(_config(tiny_scene, str(out), aoi=str(small)))[0]
    assert second["counts"]["chunks_total"] == 1
    assert second["model"]["model_id"] != first["model"]["model_id"]
    after = _files(str(out))
    key = "32645_r21500_c1000"
    assert _chunk_products(after) == {key: {"prob", "mask", "done", "stac"}}
    assert _model_id(out / "prob" / f"{key}.tif") == second["model"]["model_id"]
    assert set(USER_CHUNK_FILES) <= after  # only predict's own names are touched
    catalog = json.loads((out / "stac" / "catalog.json").read_text())
    assert sorted(lk["href"] for lk in catalog["links"] if lk["rel"] == "item") == [
        f"./{key}/{key}.json", "./mosaic/mosaic.json"]


def _probs(windows):
    """The conftest model ``p = sigmoid(40 * (B8 - 0.3))``, in numpy."""
    import numpy as np

    return (1.0 / (1.0 + np.exp(-40.0 * (windows[..., 1].astype(np.float64) - 0.3)))
            ).astype(np.float32)


def test_a_failed_or_empty_chunk_of_a_rerun_keeps_no_product_of_the_earlier_run(tiny_scene,
                                                                              tmp_path):
    """A rerun (another model) where one chunk fails and one has no imagery any more: the
    earlier run's COGs, STAC items (and the failed chunk's done-record) of those two
    chunks must go; a chunk the runner lost keeps what it has."""
    import rasterio

    from pipelines.predict import ChunkTiles, plan_predict
    from pipelines.predict.chunk import failure_record, finish_chunk, prepare_chunk
    from pipelines.predict.finalize import finalize_job
    from pipelines.predict.plan import job_keys

    out = tmp_path / "out"
    first = run_predict(_config(tiny_scene, str(out), model=tiny_scene["explainable"],
                                explain=True))[0]
    assert len(_chunk_products(_files(str(out)))) == 4
    # the same scene, no data over the bottom-right chunk now
    tif = tmp_path / "s2_hole.tif"
    with rasterio.open(tiny_scene["tif"]) as src:
        profile, dn = src.profile, src.read()
    dn[:, 32:, 32:] = 0
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(dn)
        dst.descriptions = ("B4", "B8")
    plan, elements = plan_predict(_config(tiny_scene, str(out),
                                          source={"kind": "geotiff", "images": [str(tif)]}))
    assert job_keys(plan, plan.jobs[0]) == {e[1] for e in elements}  # the lost ones too
    failed, empty = "32645_r21500_c1000", "32645_r21501_c1001"
    assert sorted(e[1] for e in elements) == [failed, "32645_r21500_c1001",
                                              "32645_r21501_c1000", empty]
    for source in plan.sources:
        source.open()
    try:
        results = []
        for element in elements:
            if element[1] == failed:
                continue
            tiles = prepare_chunk(plan, plan.sources, *element)
            results.append(finish_chunk(plan, tiles, _probs(tiles.windows()))
                           if isinstance(tiles, ChunkTiles) else tiles)
    finally:
        for source in plan.sources:
            source.close()
    assert {r["key"]: r["state"] for r in results}[empty] == "empty"
    run = finalize_job(plan, 0, results,
                       [failure_record(plan, 0, failed, "read", OSError("disk gone"))])
    assert run["status"] == "partial" and run["model"]["model_id"] != first["model"][
        "model_id"]
    products = _chunk_products(_files(str(out)))
    assert failed not in products  # its done-record, COGs and item were the first run's
    assert products[empty] == {"done"}  # this run's empty record, no COG, no item
    for key in ("32645_r21500_c1001", "32645_r21501_c1000"):
        assert products[key] == {"prob", "mask", "done", "stac"}
        assert _model_id(out / "prob" / f"{key}.tif") == run["model"]["model_id"]
    done = json.loads((out / "done" / f"{empty}.json").read_text())
    assert done["state"] == "empty" and done["files"] == {}

    # a chunk the runner lost: its products may be this run's, they stay
    lost = "32645_r21500_c1001"
    kept = [r for r in results if r["key"] != lost]
    assert finalize_job(plan, 0, kept, [])["status"] == "partial"
    assert _chunk_products(_files(str(out)))[lost] == {"prob", "mask", "done", "stac"}
