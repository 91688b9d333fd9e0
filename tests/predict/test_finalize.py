"""Finalize on a rerun into the same folder: nothing of the earlier run passes for this one.

The first run (a model with Grad-CAM, STAC on, merged COGs) writes every product; the
second, with another model, no STAC, mosaics too large to merge and no ``--explain``,
must leave none of the first run's products it did not write, and no file of the user's.
"""

from __future__ import annotations

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
