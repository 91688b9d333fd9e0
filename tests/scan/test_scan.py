"""``landslides scan`` end to end through the real CLI on a tiny synthetic world.

Two periods run; a re-run skips both without rewriting them and refreshes the summary;
a third period runs alone; a period the source lacks fails without stopping the others;
Flex Template launches submit one sweep each; Beam options reach the sweeps; bad
configurations fail before anything runs, naming the key.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml

from pipelines import cli
from pipelines.errors import ConfigError
from pipelines.scan import (
    SUBMITTED,
    ScanConfig,
    check_inputs,
    finished_sweep,
    parse_periods,
    plan_scan,
)

BANDS = ("B4", "B8", "slope")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A 2.5 km synthetic world (2015-2017) and a small seeded U-Net artifact."""
    import keras

    from model.artifact import save_artifact
    from model.unet import build_unet
    from pipelines.synth import WorldConfig, generate_world

    d = tmp_path_factory.mktemp("scan")
    generate_world(str(d / "world"), WorldConfig(seed=3, size_km=2.5, years=(2015, 2016, 2017),
                                                 event_year=2016))
    keras.utils.set_random_seed(0)
    mean, std = [0.08, 0.25, 25.0], [0.04, 0.08, 12.0]
    unet = build_unet(BANDS, base_filters=4, depth=3, mean=mean, std=std)
    save_artifact(unet, str(d / "model"), BANDS, patch_size=64, mean=mean, std=std,
                  size_multiple=8, saved_model=False)
    (d / "cfg").mkdir()
    return d


def _yaml(world: Path, file: str, **changes) -> str:
    """Write a scan file in world/cfg/ with paths relative to it; ``None`` drops a key."""
    doc = {"name": "valley", "region": "../world/study_area.geojson",
           "source": {"kind": "synthetic", "world": "../world"}, "model": "../model",
           "out": "../out", "periods": {"years": "2015-2016"},
           "reference": "../world/inventory_{year}.gpkg",
           "predict": {"chunk_size": 128}, "compare": {"resolution": 10.0, "figures": False}}
    doc.update(changes)
    doc = {k: v for k, v in doc.items() if v is not None}
    path = world / "cfg" / f"{file}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


def _trends(out: Path) -> list[dict]:
    with (out / "summary" / "trends.csv").open() as f:
        return list(csv.DictReader(f))


def _aoi_km2(world: Path) -> float:
    aoi = gpd.read_file(world / "world" / "study_area.geojson")
    return float(aoi.to_crs(aoi.estimate_utm_crs()).area.sum()) / 1e6


@pytest.fixture(scope="module")
def first(world):
    """The first scan: two calendar years, against the world's own inventories."""
    code = cli.main(["scan", "--config", _yaml(world, "two")])
    return {"code": code, "out": world / "out"}


def test_scan_runs_two_periods_and_summarises_them(world, first):
    import pystac

    out = first["out"]
    assert first["code"] == 0
    rows = _trends(out)
    assert [r["period"] for r in rows] == ["2015", "2016"]
    area = _aoi_km2(world)
    for row in rows:
        y = row["period"]
        period = out / "periods" / y
        run = json.loads((period / "sweep" / "run.json").read_text())
        assert run["status"] == "ok" and run["aoi"]["start"] == f"{y}-01-01"
        assert run["aoi"]["end"] == f"{int(y) + 1}-01-01"
        rec = json.loads((period / "period.json").read_text())
        assert rec["model_id"] == json.loads((world / "model" / "artifact.json").read_text())[
            "model_id"]
        # the table holds what the sweep and the comparison wrote
        n_pred = len(gpd.read_file(period / "sweep" / "inventory.gpkg"))
        assert n_pred > 0 and int(row["predicted_count"]) == n_pred
        stats = {r["inventory"]: r for r in csv.DictReader(
            (period / "compare" / "stats.csv").open())}
        assert int(row["reference_count"]) == int(stats["reference"]["count"])
        assert int(row["diff_count"]) == n_pred - int(row["reference_count"])
        assert float(row["predicted_density_per_km2"]) == pytest.approx(n_pred / area,
                                                                        rel=2e-3)
        assert 0.0 <= float(row["pixel_f1"]) <= 1.0
    assert int(rows[1]["predicted_count_change"]) == \
        int(rows[1]["predicted_count"]) - int(rows[0]["predicted_count"])
    summary = json.loads((out / "summary" / "trends.json").read_text())
    assert summary["mode"] == "comparison" and summary["periods_done"] == ["2015", "2016"]
    corr = summary["correlations"]["predicted_vs_reference_count"]
    assert corr["r"] is None and corr["n"] == 2 and "at least 3" in corr["note"]
    html = (out / "summary" / "summary.html").read_text()
    assert 'src="trends.png"' in html and "../periods/2016/compare/report.html" in html
    assert (out / "summary" / "trends.png").stat().st_size > 10_000

    # STAC: a root catalog with an item per period and the sweeps' catalogs as children
    cat = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    children = list(cat.get_children())
    assert len(children) == 2
    assert {Path(c.get_self_href()).parents[2].name for c in children} == {"2015", "2016"}
    assert all(any(c.get_items(recursive=True)) for c in children)
    items = {i.id: i for i in cat.get_items()}
    assert set(items) == {"period-2015", "period-2016", "summary"}
    assert items["period-2016"].properties["landslides:count"] == int(rows[1]["predicted_count"])
    assert items["period-2016"].common_metadata.start_datetime.year == 2016
    for item in items.values():
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_file(), asset.href
            assert not Path(asset.href).is_absolute()


def test_rerun_skips_done_periods_and_refreshes_the_summary(world, first):
    out = first["out"]
    before = _mtimes(out / "periods")
    summary_before = (out / "summary" / "trends.json").stat().st_mtime_ns
    assert cli.main(["scan", "--config", _yaml(world, "two")]) == 0
    assert _mtimes(out / "periods") == before
    assert (out / "summary" / "trends.json").stat().st_mtime_ns > summary_before
    record = json.loads((out / "scan.json").read_text())
    assert {p["period"]: p["action"] for p in record["periods"]} == {"2015": "skipped",
                                                                     "2016": "skipped"}


def test_a_new_period_runs_alone_and_joins_the_trends(world, first):
    out = first["out"]
    before = _mtimes(out / "periods")
    assert cli.main(["scan", "--config", _yaml(world, "three",
                                               periods={"years": "2015-2017"})]) == 0
    after = _mtimes(out / "periods")
    assert {k: v for k, v in after.items() if not k.startswith("2017")} == before
    record = json.loads((out / "scan.json").read_text())
    assert [p["action"] for p in record["periods"]] == ["skipped", "skipped", "done"]
    rows = _trends(out)
    assert [r["period"] for r in rows] == ["2015", "2016", "2017"]
    corr = json.loads((out / "summary" / "trends.json").read_text())["correlations"]
    counts = [float(r["predicted_count"]) for r in rows]
    expected = np.corrcoef([2015, 2016, 2017], counts)[0, 1]
    assert corr["predicted_count_vs_time"]["n"] == 3
    assert corr["predicted_count_vs_time"]["r"] == pytest.approx(expected, abs=1e-9)
    ref = [float(r["reference_count"]) for r in rows]
    assert corr["predicted_vs_reference_count"]["r"] == pytest.approx(
        np.corrcoef(ref, counts)[0, 1], abs=1e-9)


def test_a_failed_period_is_reported_not_done_and_the_others_go_on(world, first, caplog):
    out = first["out"]
    periods = [{"name": str(y), "start": dt.date(y, 1, 1), "end": dt.date(y + 1, 1, 1)}
               for y in (2015, 2016, 2017, 2019)]
    caplog.set_level("INFO", logger="pipelines.scan")
    assert cli.main(["scan", "--config", _yaml(world, "fail", periods=periods)]) == 1
    assert not (out / "periods" / "2019" / "period.json").exists()
    record = json.loads((out / "scan.json").read_text())
    failed = {p["period"]: p for p in record["periods"] if p["action"] == "failed"}
    assert list(failed) == ["2019"]
    assert "2019" in failed["2019"]["error"] and "available years" in failed["2019"]["error"]
    assert record["done_periods"] == ["2015", "2016", "2017"]
    summary = json.loads((out / "summary" / "trends.json").read_text())
    assert summary["periods_not_done"] == ["2019"]
    assert "1 period(s) failed: 2019" in caplog.text


def test_a_sweep_recorded_before_an_option_existed_is_still_done(world, first):
    """A run.json without ``precision`` (written before the option) ran at fp32."""
    from pipelines.scan import ScanConfig, finished_sweep

    run_path = first["out"] / "periods" / "2015" / "sweep" / "run.json"
    original = run_path.read_text()
    run = json.loads(original)
    del run["config"]["precision"]
    run_path.write_text(json.dumps(run))
    try:
        cfg = ScanConfig.from_yaml(_yaml(world, "two"))
        period = next(p for p in cfg.periods if p.name == "2015")
        assert finished_sweep(cfg, period, check_inputs(cfg)) is not None
        int8 = ScanConfig.from_yaml(_yaml(world, "int8", predict={"chunk_size": 128,
                                                                  "precision": "int8"}))
        assert finished_sweep(int8, period, check_inputs(int8)) is None  # another precision
    finally:
        run_path.write_text(original)


def test_dry_run_plans_without_writing(world, first, caplog):
    caplog.set_level("INFO", logger="pipelines.scan")
    fresh = world / "dry"
    assert cli.main(["scan", "--config", _yaml(world, "dry", out="../dry"), "--dry-run"]) == 0
    assert not fresh.exists()
    assert re.search(r"2015 +2015-01-01 \.\. 2016-01-01 +run \(predict \+ compare\)",
                     caplog.text)
    caplog.clear()
    mtimes = _mtimes(first["out"])
    assert cli.main(["scan", "--config", _yaml(world, "two"), "--dry-run",
                     "--periods", "2016"]) == 0
    assert _mtimes(first["out"]) == mtimes
    assert re.search(r"2015 +2015-01-01 \.\. 2016-01-01 +not selected", caplog.text)
    assert re.search(r"2016 +2016-01-01 \.\. 2017-01-01 +skip \(done\)", caplog.text)


def test_a_dry_run_says_which_period_the_source_cannot_supply(world, caplog):
    """The world holds 2015-2017: the plan marks 2018, and the dry run exits 1."""
    caplog.set_level("INFO", logger="pipelines.scan")
    fresh = world / "dry-late"
    cfg = _yaml(world, "late", out="../dry-late", periods={"years": "2016-2018"})
    assert cli.main(["scan", "--config", cfg, "--dry-run"]) == 1
    assert re.search(r"2018 +2018-01-01 \.\. 2019-01-01 +run \(cannot run: Year 2018 is not "
                     r"in the synthetic world", caplog.text)
    assert "Period 2018 cannot run" in caplog.text and "Period 2016 cannot" not in caplog.text
    assert not fresh.exists()


def test_every_cli_source_option_works_in_the_scan_file(world, first):
    """``mask_clouds: false`` (``--keep-clouds`` on the command line) reaches the sweep."""
    path = _yaml(world, "clouds", out="../clouds", periods={"years": 2016}, source={
        "kind": "synthetic", "world": "../world", "mask_clouds": False})
    assert cli.main(["scan", "--config", path]) == 0
    sweep = world / "clouds" / "periods" / "2016" / "sweep"
    saved = json.loads((sweep / "predict_config.json").read_text())
    assert saved["source"] == {"kind": "synthetic", "world": str(world / "world"),
                               "mask_clouds": False}

    def valid(folder: Path) -> int:
        return json.loads((folder / "run.json").read_text())["counts"]["valid_px"]

    # cloudy pixels are imagery now, not nodata
    assert valid(sweep) > valid(first["out"] / "periods" / "2016" / "sweep")


def test_beam_options_reach_every_sweep(world):
    assert cli.main(["scan", "--config", _yaml(world, "runner", out="../runner",
                                               periods={"years": 2016}),
                     "--runner", "NoSuchRunner"]) == 1
    record = json.loads((world / "runner" / "scan.json").read_text())
    (period,) = record["periods"]
    assert period["action"] == "failed" and "NoSuchRunner" in period["error"]


def test_flex_template_launches_submit_one_sweep_each(world):
    """Inside a template launcher (--template_location) a launch makes one job; the
    DirectRunner ignores the option and runs it, so the second launch finds it done."""
    path = _yaml(world, "flex", out="../flex", reference=None,
                 periods={"years": "2016-2017"})
    launch = ["scan", "--config", path, "--template_location", str(world / "job.json")]
    assert cli.main(launch) == 0
    out = world / "flex"
    record = json.loads((out / "scan.json").read_text())
    assert record["submit_only"] is True
    assert [p["action"] for p in record["periods"]] == ["done", "queued"]
    sub = json.loads((out / "periods" / "2016" / SUBMITTED).read_text())
    run = json.loads((out / "periods" / "2016" / "sweep" / "run.json").read_text())
    assert sub["started"] == run["timings"]["started"]
    assert not (out / "periods" / "2017" / "sweep").exists()
    assert cli.main(launch) == 0
    record = json.loads((out / "scan.json").read_text())
    assert [p["action"] for p in record["periods"]] == ["skipped", "done"]
    # statistics only: the predicted inventories, no reference side
    summary = json.loads((out / "summary" / "trends.json").read_text())
    assert summary["mode"] == "stats-only"
    for row in summary["rows"]:
        inv = out / "periods" / row["period"] / "sweep" / "inventory.gpkg"
        assert row["predicted_count"] == len(gpd.read_file(inv))
        assert row["reference_count"] is None and row["diff_count"] is None

    # a sweep submitted again (newer than its run.json) is in flight, then stale
    cfg = ScanConfig.from_yaml(path)
    inputs = check_inputs(cfg)
    p = cfg.periods[1]
    fp = cfg.fingerprint(p, inputs.model_id, inputs.region_digest)
    (out / "periods" / "2017" / "period.json").unlink()
    assert finished_sweep(cfg, p, inputs) is not None
    now = dt.datetime.now(dt.UTC)
    sub_path = out / "periods" / "2017" / SUBMITTED
    sub = json.loads(sub_path.read_text())
    sub.update(started=(now + dt.timedelta(seconds=5)).isoformat(timespec="seconds"),
               submitted=now.isoformat(timespec="seconds"))
    sub_path.write_text(json.dumps(sub))
    assert finished_sweep(cfg, p, inputs) is None  # the older run does not count
    assert [e.action for e in plan_scan(cfg, inputs, [p], submit_only=True)] == \
        ["not_selected", "wait"]
    assert sub["fingerprint"] == fp
    sub["submitted"] = (now - dt.timedelta(hours=25)).isoformat(timespec="seconds")
    sub_path.write_text(json.dumps(sub))
    assert [e.action for e in plan_scan(cfg, inputs, [p], submit_only=True)] == \
        ["not_selected", "run"]


# --------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("changes,message", [
    ({"colour": "red"}, "Unknown key 'colour' in the scan file; known keys: name, region"),
    ({"out": None}, "out is missing from the scan file"),
    ({"model": "../no-model"}, "model: no model artifact at"),
    ({"region": "../nowhere.geojson"}, "region: Area of interest"),
    ({"periods": []}, "periods is empty"),
    ({"periods": {"years": ""}}, "periods.years"),
    ({"periods": {"year": 2016}}, "Unknown key periods.year"),
    ({"periods": [{"name": "wet", "start": "2017-13-01", "end": "2017-10-01"}]},
     "periods[0].start is not a valid date: '2017-13-01'"),
    ({"periods": [{"name": "wet", "start": "2017-06-01", "end": "2017-06-01"}]},
     "periods[0].end 2017-06-01 is not after periods[0].start"),
    ({"periods": [{"name": "a", "start": "2016-01-01", "end": "2016-05-01"},
                  {"name": "a", "start": "2017-01-01", "end": "2017-05-01"}]},
     "periods[1].name 'a' is used twice"),
    ({"periods": [{"name": "wet", "start": "2017-06-01"}]}, "periods[0].end is missing"),
    ({"predict": {"chunksize": 128}}, "Unknown key predict.chunksize; known keys: window"),
    ({"predict": {"start": "2016-01-01"}}, "predict.start is set by the scan itself"),
    ({"predict": {"chunk_size": "big"}}, "predict.chunk_size must be int, got 'big'"),
    ({"predict": {"overlap": 1.5}}, "predict: overlap must be in [0, 1)"),
    ({"compare": {"match": "best"}}, "compare: match must be one of"),
    ({"source": {"kind": "synthetic", "world": "../world", "year": 2016}},
     "Unknown key source.year for a synthetic source (the scan's periods give"),
    ({"source": {"kind": "radar"}}, "source.kind must be one of synthetic, geotiff"),
    ({"source": {"kind": "synthetic", "world": "../nothing"}}, "source.world:"),
    ({"reference": "../ref_{month}.gpkg"}, "holds {month}: only {year} and {period}"),
    ({"name": "my scan"}, "name 'my scan' must be a short identifier"),
])
def test_bad_configurations_fail_before_running_naming_the_key(world, capsys, changes,
                                                               message):
    out = world / "never"
    path = _yaml(world, "bad", **{"out": "../never", **changes})
    assert cli.main(["scan", "--config", path]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()


def test_unknown_period_selection_and_unreadable_yaml(world, capsys):
    assert cli.main(["scan", "--config", _yaml(world, "sel", out="../never"),
                     "--periods", "2015,2031"]) == 2
    assert "--periods names '2031', which is not a period" in capsys.readouterr().err
    bad = world / "cfg" / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    assert cli.main(["scan", "--config", str(bad)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_period_forms():
    today = dt.date(2023, 3, 1)
    assert [p.name for p in parse_periods({"years": "2020-"}, today)] == ["2020", "2021",
                                                                         "2022"]
    assert [p.name for p in parse_periods({"years": [2014, 2012]})] == ["2012", "2014"]
    (p,) = parse_periods({"years": 2016})
    assert (p.start, p.end, p.year) == ("2016-01-01", "2017-01-01", 2016)
    (m,) = parse_periods([{"name": "monsoon-2017", "start": dt.date(2017, 6, 1),
                           "end": "2017-10-01"}])
    assert (m.start, m.end, m.year) == ("2017-06-01", "2017-10-01", 2017)
    with pytest.raises(ConfigError, match="no calendar year since 2023 has ended"):
        parse_periods({"years": "2023-"}, today)
    with pytest.raises(ConfigError, match="not a valid folder name"):
        parse_periods([{"name": "../up", "start": "2017-01-01", "end": "2017-02-01"}])


def test_the_himalaya_scan_settings_run_with_large_model(world):
    """infra/examples/scan-himalaya.yaml's sweep and comparison settings, ``large_model``
    included, on the synthetic world: the sweep completes with zero dead letters."""
    from pipelines.predict.config import CONFIG

    him = yaml.safe_load((Path(__file__).resolve().parents[2] / "infra" / "examples" /
                          "scan-himalaya.yaml").read_text())
    assert him["predict"]["large_model"] is True
    code = cli.main(["scan", "--config", _yaml(
        world, "himalaya", out="../himalaya", periods={"years": 2016}, reference=None,
        predict=him["predict"], compare={**him["compare"], "figures": False})])
    assert code == 0
    sweep = world / "himalaya" / "periods" / "2016" / "sweep"
    assert json.loads((sweep / CONFIG).read_text())["large_model"] is True
    run = json.loads((sweep / "run.json").read_text())
    assert run["status"] == "ok" and run["counts"]["chunks_computed"] >= 1
    assert run["counts"]["chunks_failed"] == 0 and run["failures"]["count"] == 0
    assert not (sweep / "failed_chunks.jsonl").exists()
