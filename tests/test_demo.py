"""The quick demo end to end through the real CLI, and its resume logic."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
from affine import Affine

from pipelines import cli
from pipelines.demo import DemoConfig, Stage, StageRunner, holdout_gap_m
from pipelines.errors import ConfigError
from tests.conftest import read_shards


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_the_study(demo_out):
    report = demo_out / "report" / "report.html"
    assert report.exists()
    html = report.read_text()
    rows = list(csv.DictReader((demo_out / "report" / "stats.csv").open()))
    years = {int(r["year"]) for r in rows}
    assert years == set(range(2013, 2020))
    pred = {int(r["year"]): int(r["count"]) for r in rows if r["inventory"] == "predicted"}
    assert len(pred) == 7
    for fig in ("trends.png", "overlay_2015.png", "density_2015.png"):
        assert (demo_out / "report" / "figures" / fig).stat().st_size > 10_000
        assert f"figures/{fig}" in html
    evaluation = json.loads((demo_out / "stages" / "evaluate.json").read_text())["result"]
    for name in ("base", "finetuned"):
        assert 0.0 <= evaluation[name]["f1"] <= 1.0
    for y in range(2013, 2020):
        run = json.loads((demo_out / "sweeps" / str(y) / "run.json").read_text())
        assert run["counts"]["chunks_failed"] == 0
        assert (demo_out / "sweeps" / str(y) / "inventory.gpkg").exists()


def test_quick_demo_is_scored_on_held_out_blocks_with_temporal_context(demo_out):
    areas = json.loads((demo_out / "stages" / "areas.json").read_text())["result"]
    metrics = json.loads((demo_out / "report" / "metrics.json").read_text())
    # scored on the held-out blocks only, against each sweep's mask mosaic
    assert metrics["aoi"] == areas["eval_area"]
    assert 0 < areas["eval_area_km2"] < areas["eval_area_km2"] + areas["finetune_area_km2"]
    eval_m2 = areas["eval_area_km2"] * 1e6
    for y in range(2013, 2020):
        pixel = metrics["years"][str(y)]["pixel"]
        # pixels without clear imagery on every date of the stack are not scored
        assert 0 < pixel["valid_area_m2"] < 1.05 * eval_m2
        assert "n_unobserved" in metrics["inputs"]["reference"][str(y)]
    rows = {int(r["year"]) for r in metrics["multitemporal"]["rows"]}
    assert rows == set(range(2013, 2020))
    # the report names what training saw and what it did not
    html = (demo_out / "report" / "report.html").read_text()
    assert "held-out blocks" in html and "never trained on" in html
    # the model records its temporal input stack; the training export covers several years
    art = json.loads((demo_out / "models" / "finetuned" / "artifact.json").read_text())
    assert art["stack"]["references"] == [
        {"name": "base", "offset": "-4y..-1y", "composite": "greenest"},
        {"name": "pre", "start": "2009-01-01", "end": "2012-12-31", "composite": "greenest"},
        {"name": "bare", "offset": "-4y..-1y", "composite": "barest"}]
    assert {"dNDVI@base", "dNDVI@pre", "dNDVI@bare"} <= set(art["bands"])
    assert art["training"]["monitor"] == "val_loss"
    assert art["bands"] == art["stack"]["channels"]
    manifest = json.loads((demo_out / "shards" / "train" / "manifest.json").read_text())
    assert manifest["years"] == [2014, 2016, 2017, 2018]
    # held-out and fine-tuning areas do not touch: the gap keeps training windows away
    import geopandas as gpd

    held = gpd.read_file(areas["eval_area"]).to_crs(32645).union_all()
    tune = gpd.read_file(areas["finetune_area"]).to_crs(32645).union_all()
    assert held.distance(tune) > 100.0
    # the report states the gap this demo used (the quick demo's is half the full one's)
    assert f"a {holdout_gap_m(DemoConfig(quick=True)):.0f} m gap separates" in html
    # patches cut at the fine-tuning area's edge reach into the held-out blocks: none of
    # their pixels there holds data or a label (export reads only inside its area)
    reached = 0
    for shards in ("train", "finetune"):
        for split, patches in read_shards(demo_out / "shards" / shards).items():
            for p in patches:
                a = Affine(*p.transform)
                rows, cols = np.indices(p.mask.shape) + 0.5  # pixel centres
                xs = (a.c + a.a * cols + a.b * rows).ravel()
                ys = (a.f + a.d * cols + a.e * rows).ravel()
                inside = shapely.contains_xy(held, xs, ys).reshape(p.mask.shape)
                reached += bool(inside.any())
                seen = (np.abs(p.image).sum(-1) > 0) | (p.mask != 255)
                assert not (seen & inside).any(), (shards, split, p.key)
    assert reached > 0  # the check above looked at patches that do reach into them


def test_rerun_reuses_every_stage(demo_out, caplog):
    before = {p.name: p.stat().st_mtime_ns for p in (demo_out / "stages").iterdir()}
    caplog.set_level("INFO", logger="pipelines.demo")
    assert cli.main(["demo", "--quick", "--out", str(demo_out)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (demo_out / "stages").iterdir()}
    assert before == after
    assert caplog.text.count("already done") == len(before)


def test_the_stem_reaches_the_training_settings_and_bad_widths_are_refused(tmp_path):
    from pipelines.demo import _finetune_settings, _train_settings, stages

    assert _train_settings(DemoConfig(out=str(tmp_path)))["stem"] == (32,)
    assert _train_settings(DemoConfig(out=str(tmp_path), stem=()))["stem"] == ()
    assert "stem" not in _finetune_settings(DemoConfig(out=str(tmp_path)))  # the base's
    # another stem retrains the models but reuses the world, its terrain and areas
    a, b = DemoConfig(out=str(tmp_path)), DemoConfig(out=str(tmp_path), stem=(64, 32))
    ra, rb = StageRunner(a, stages(a)), StageRunner(b, stages(b))
    same = {s.name for s, t in zip(ra.stages, rb.stages) if ra.fingerprint(s) == rb.fingerprint(t)}
    assert {"world", "terrain", "areas"} <= same and "train" not in same
    for bad in ((0,), (32, -1), (True,)):
        with pytest.raises(ConfigError, match="stem must be positive integer widths"):
            DemoConfig(out=str(tmp_path), stem=bad)


def test_a_training_seed_retrains_on_the_same_world_and_shards_only(tmp_path, monkeypatch):
    import dataclasses

    import model.train
    from pipelines import fsio
    from pipelines.demo import stage_finetune, stage_train, stages

    a, b = DemoConfig(out=str(tmp_path)), DemoConfig(out=str(tmp_path), train_seed=5)
    assert (a.training_seed, b.training_seed) == (42, 5)
    ra, rb = StageRunner(a, stages(a)), StageRunner(b, stages(b))
    same = {s.name for s, t in zip(ra.stages, rb.stages) if ra.fingerprint(s) == rb.fingerprint(t)}
    assert {"world", "terrain", "areas"} <= same and not {"train", "finetune"} & same
    # unset, it is not part of any fingerprint: demos finished before it existed stay done
    train = next(s for s in ra.stages if s.name == "train")
    fields = {k: v for k, v in dataclasses.asdict(a).items()
              if k not in ("out", "train_seed", "ema", "base_filters")}
    assert ra.fingerprint(train) == fsio.digest(
        {"stage": "train", "config": fields, **train.fingerprint})[:16]
    # both trainings take it (the world, its blocks and the shards keep --seed)
    seeds: list[int] = []
    monkeypatch.setattr(model.train, "train",
                        lambda data, out, config: seeds.append(config.seed) or {"model_id": ""})
    stage_train(b)
    stage_finetune(b)
    assert seeds == [5, 5]
    for bad in (-1, True, "3", 2.0):
        with pytest.raises(ConfigError, match="train_seed must be an integer >= 0"):
            DemoConfig(out=str(tmp_path), train_seed=bad)


def test_a_moving_average_retrains_with_it_and_is_left_out_of_fingerprints_when_off(
        tmp_path, monkeypatch):
    import model.train
    from pipelines.demo import stage_finetune, stage_train, stages

    off, on = DemoConfig(out=str(tmp_path)), DemoConfig(out=str(tmp_path), ema=0.99)
    ron, roff = StageRunner(on, stages(on)), StageRunner(off, stages(off))
    same = {s.name for s, t in zip(ron.stages, roff.stages)
            if ron.fingerprint(s) == roff.fingerprint(t)}
    assert {"world", "terrain", "areas"} <= same and not {"train", "finetune"} & same
    # an integer 0 is off too (the fingerprints at 0 are checked with the training seed's)
    assert DemoConfig(out=str(tmp_path), ema=0) == off
    emas: list[float] = []
    monkeypatch.setattr(model.train, "train",
                        lambda data, out, config: emas.append(config.ema) or {"model_id": ""})
    for cfg in (on, off):
        stage_train(cfg)
        stage_finetune(cfg)
    assert emas == [0.99, 0.99, 0.0, 0.0]
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ConfigError, match="ema must be a number in"):
            DemoConfig(out=str(tmp_path), ema=bad)


def test_a_wider_unet_retrains_and_the_default_width_is_left_out_of_fingerprints(
        tmp_path, monkeypatch):
    import model.train
    from pipelines.demo import stage_train, stages

    std, wide = DemoConfig(out=str(tmp_path)), DemoConfig(out=str(tmp_path), base_filters=24)
    rs, rw = StageRunner(std, stages(std)), StageRunner(wide, stages(wide))
    same = {s.name for s, t in zip(rs.stages, rw.stages) if rs.fingerprint(s) == rw.fingerprint(t)}
    assert {"world", "terrain", "areas"} <= same
    assert not {"train", "finetune"} & same
    widths: list[int] = []
    monkeypatch.setattr(model.train, "train",
                        lambda data, out, config: widths.append(config.base_filters)
                        or {"model_id": ""})
    for cfg in (wide, std, DemoConfig(out=str(tmp_path), quick=True, base_filters=24)):
        stage_train(cfg)
    assert widths == [24, 16, 8]  # the quick demo keeps its own small U-Net
    for bad in (0, -8, True, "24", 24.0):
        with pytest.raises(ConfigError, match="base_filters must be a positive integer"):
            DemoConfig(out=str(tmp_path), base_filters=bad)


def test_a_rerun_stage_invalidates_the_stages_after_it(tmp_path):
    calls: list[str] = []

    def make(name):
        def run(cfg):
            calls.append(name)
            return {"n": len(calls)}
        return run

    cfg = DemoConfig(out=str(tmp_path), quick=True)
    stages = [Stage(n, make(n)) for n in ("a", "b", "c")]
    StageRunner(cfg, stages).run()
    assert calls == ["a", "b", "c"]
    StageRunner(cfg, stages).run()
    assert calls == ["a", "b", "c"]  # all reused
    (tmp_path / "stages" / "b.json").unlink()
    StageRunner(cfg, stages).run()
    assert calls == ["a", "b", "c", "b", "c"]  # b re-ran, so c re-ran; a reused
    changed = [Stage("a", make("a")), Stage("b", make("b"), fingerprint={"v": 2}),
               Stage("c", make("c"))]
    StageRunner(cfg, changed).run()
    assert calls[-2:] == ["b", "c"]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_study(demo_out, tmp_path):
    """Export, training, sweeps and comparison are deterministic: a second quick demo of
    the same seed gives the same metrics, inventories and probability COGs (pixel values),
    as bench/demo_digest.py measures them."""
    from tests.scripts import load_script

    digest = load_script("bench/demo_digest.py")
    again = tmp_path / "again"
    assert cli.main(["demo", "--quick", "--out", str(again)]) == 0
    first, second = digest.digest(str(demo_out)), digest.digest(str(again))
    assert len(first["probability_cogs"]) > 10 and len(first["inventories"]) == 7
    assert first == second


def _sweep_and_compare(monkeypatch, tmp_path, sweep_status: str = "ok",
                       compare_status: str = "ok") -> tuple[DemoConfig, dict]:
    """The demo reduced to its sweep and compare stages, on stubbed predict and compare."""
    import pipelines.compare
    import pipelines.demo as demo
    import pipelines.predict

    calls: dict = {"sweep": [], "compare": 0, "status": {"sweep": sweep_status,
                                                         "compare": compare_status}}

    def run_predict(config, beam_args=None):
        calls["sweep"].append(config.out)
        failed = 0 if calls["status"]["sweep"] == "ok" else 4
        return [{"status": calls["status"]["sweep"], "failures": {"count": failed},
                 "counts": {"polygons": 3, "chunks_total": 9, "chunks_failed": failed,
                            "landslide_px": 100}}]

    def run_compare(config):
        calls["compare"] += 1
        return {"status": calls["status"]["compare"], "years": {}, "problems": [
            {"level": "error", "message": "Reference inventory_2016.gpkg is truncated."}]}

    monkeypatch.setattr(pipelines.predict, "run_predict", run_predict)
    monkeypatch.setattr(pipelines.compare, "run_compare", run_compare)
    every = demo.stages
    monkeypatch.setattr(demo, "stages", lambda cfg: [
        s for s in every(cfg) if s.name in ("sweep", "compare")])
    (tmp_path / "stages").mkdir()
    areas = {"eval_area": "eval.geojson", "eval_area_km2": 1.0,
             "finetune_area": "tune.geojson", "finetune_area_km2": 2.0}
    (tmp_path / "stages" / "areas.json").write_text(json.dumps({"result": areas}))
    return DemoConfig(out=str(tmp_path), years=(2013, 2014), train_years=(2014,)), calls


def test_a_partial_sweep_is_not_a_finished_stage(tmp_path, monkeypatch, caplog):
    """Failed chunks: the demo exits 1, records no sweep and runs no comparison; the next
    run sweeps again."""
    from pipelines.demo import demo_command

    cfg, calls = _sweep_and_compare(monkeypatch, tmp_path, sweep_status="partial")
    assert demo_command(cfg) == 1
    assert not (tmp_path / "stages" / "sweep.json").exists()
    assert calls["compare"] == 0
    assert "sweeps of 2 year(s) are incomplete" in caplog.text and "4 failed" in caplog.text
    calls["status"]["sweep"] = "ok"
    assert demo_command(cfg) == 0
    assert len(calls["sweep"]) == 4  # both years swept again
    assert (tmp_path / "stages" / "sweep.json").exists()
    assert (tmp_path / "stages" / "compare.json").exists()


def test_an_incomplete_comparison_is_not_a_finished_stage(tmp_path, monkeypatch, capsys):
    """`landslides demo` exits 1 and records no comparison until one is complete."""
    _, calls = _sweep_and_compare(monkeypatch, tmp_path, compare_status="partial")
    for status in ("partial", "failed"):
        calls["status"]["compare"] = status
        assert cli.main(["demo", "--out", str(tmp_path)]) == 1
        assert not (tmp_path / "stages" / "compare.json").exists()
        assert (tmp_path / "stages" / "sweep.json").exists()
    calls["status"]["compare"] = "ok"
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "stages" / "compare.json").exists()
    assert len(calls["sweep"]) == 7 and calls["compare"] == 3  # swept once, compared 3x


def test_a_stage_interrupted_while_it_reruns_leaves_no_matching_record(tmp_path):
    """A stage about to re-run deletes its record and the later stages' first: a run
    interrupted inside it must not leave a record of the old configuration over the new
    outputs."""
    from pipelines.demo import WORLD_FIELDS

    world = tmp_path / "world.txt"

    def stage_world(cfg):  # writes its output, then is interrupted for seed 7
        world.write_text(f"seed {cfg.seed}")
        if cfg.seed == 7:
            raise KeyboardInterrupt
        return {"world": str(world)}

    def stage_export(cfg):
        return {"exported_from": world.read_text()}

    def runner(cfg):
        return StageRunner(cfg, [Stage("world", stage_world, uses=WORLD_FIELDS),
                                 Stage("export_train", stage_export)])

    assert runner(DemoConfig(out=str(tmp_path))).run()["export_train"] == {
        "exported_from": "seed 42"}
    with pytest.raises(KeyboardInterrupt):
        runner(DemoConfig(out=str(tmp_path), seed=7)).run()
    assert not (tmp_path / "stages" / "world.json").exists()
    assert not (tmp_path / "stages" / "export_train.json").exists()
    # back to seed 42 (another model setting): the world is made again, not reused
    again = runner(DemoConfig(out=str(tmp_path), ema=0.5)).run()
    assert again["export_train"] == {"exported_from": "seed 42"}
