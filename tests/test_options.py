"""One options dataclass per command: the CLI, the scan YAML and the Flex Template take
exactly its fields (issue 16, item 1).

Every command's dataclass is walked: each option is a flag of that command and nothing
else is; the flags' defaults are the dataclass's; a scan file's ``source:``, ``predict:``
and ``compare:`` mappings take exactly the options marked ``yaml``; the template's
parameters are exactly the options marked ``template`` and each one's command line is
accepted by the CLI; ``infra/scan-template-metadata.json`` is the generator's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.errors import ConfigError, InputError
from pipelines.options.commands import COMMANDS
from pipelines.options.compare import CompareConfig
from pipelines.options.fields import (
    base_type,
    cli_fields,
    default_of,
    flag_of,
    from_namespace,
    yaml_keys,
)
from pipelines.options.predict import PredictConfig
from pipelines.options.source import (
    EE_CLOUD_MASKS,
    EE_DEMS,
    KINDS,
    SourceOptions,
    check_spec,
    passthrough_keys,
    spec_keys,
)
from pipelines.options.template import PARAMS, TEMPLATE_COMMANDS, render

ROOT = Path(__file__).resolve().parents[1]
GLOBAL = {"-h", "--help"}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _options(command: str) -> list[tuple[type, dataclasses.Field]]:
    return [(owner, f) for owner, f, _ in cli_fields(COMMANDS[command].options_class())]


def _expected_flags(command: str) -> set[str]:
    flags = set()
    for owner, f in _options(command):
        if f.metadata.get("positional"):
            continue
        flag = flag_of(f)
        flags.add(flag)
        tp = base_type(typing.get_type_hints(owner)[f.name])
        action = f.metadata.get("action")
        if tp is bool and action is None and (default_of(f) is not False or
                                              _overrides(command, f)):
            flags.add("--no-" + flag[2:])  # --flag / --no-flag
    return flags


def _overrides(command: str, f: dataclasses.Field) -> bool:
    cls = COMMANDS[command].options_class()
    return any(g.metadata.get("overrides") and any(
        h is f for _, h, _ in cli_fields(g.metadata["nested"]))
        for g in dataclasses.fields(cls) if "nested" in g.metadata)


# --------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_a_flag_of_its_command_and_nothing_else_is(command):
    p = _subparser(command)
    flags = {o for o in p._option_string_actions}
    assert flags - GLOBAL == _expected_flags(command)
    positional = [a.dest for a in p._actions if not a.option_strings]
    assert positional == [f.name for _, f in _options(command)
                          if f.metadata.get("positional")]
    dests = {a.dest for a in p._actions} - {"help"}
    assert dests == {f.name for _, f in _options(command)}  # each flag fills its field


def _minimal_argv(command: str) -> list[str]:
    argv = [command]
    for _, f in _options(command):
        if default_of(f) is dataclasses.MISSING and "nested" not in f.metadata:
            argv += ["x"] if f.metadata.get("positional") else [flag_of(f), "x"]
    return argv


@pytest.mark.parametrize("command", list(COMMANDS))
def test_unset_flags_keep_the_dataclass_defaults(command):
    cls = COMMANDS[command].options_class()
    args = cli.build_parser(command).parse_args(_minimal_argv(command))
    options = from_namespace(cls, args)
    for f in dataclasses.fields(cls):
        default = default_of(f)
        if f.metadata.get("convert"):  # the source: the spec of the default options
            default = f.metadata["convert"](f.metadata["nested"]())
        if default is not dataclasses.MISSING:
            assert getattr(options, f.name) == default, f.name


def test_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Chunk side in pixels (512)." in out
    assert "Half-side in metres of the square around --point or each event (1000)." in out
    assert "--min-area MIN_AREA" in out and "--keep-clouds" in out


def test_flags_become_the_options_objects_the_commands_run():
    def parse(*argv: str):
        args = cli.build_parser(argv[0]).parse_args(list(argv))
        return from_namespace(COMMANDS[argv[0]].options_class(), args)

    p = parse("predict", "--model", "m", "--out", "o", "--aoi", "1,2,3,4", "--min-area", "50",
              "--retry-delay", "0.5", "--source", "geotiff", "--images", "a.tif", "--images",
              "b.tif", "--scale", "1e-4", "--mask-zero", "--no-stac")
    assert isinstance(p, PredictConfig)
    assert (p.min_area_m2, p.retry_delay_s, p.stac) == (50.0, 0.5, False)
    assert p.source == {"kind": "geotiff", "images": ["a.tif", "b.tif"], "dem": None,
                        "mask_zero": True, "scale": 1e-4}
    e = parse("export", "--out", "o", "--aoi", "a", "--world", "w", "--keep-clouds",
              "--split", "0.6,0.2,0.2", "--bands", "B4,B8", "--reference", "prev=-1y",
              "--years", "2014-2016", "--classes", "scarp=1,deposit=2")
    assert e.source == {"kind": "synthetic", "world": "w", "mask_clouds": False}
    assert (e.split, e.bands, e.reference, e.years) == ((0.6, 0.2, 0.2), ("B4", "B8"),
                                                        ("prev=-1y",), (2014, 2015, 2016))
    assert e.classes == {"scarp": 1, "deposit": 2}
    ee = parse("predict", "--model", "m", "--out", "o", "--source", "earthengine",
               "--ee-project", "p", "--ee-dem", "srtm", "--ee-max-concurrent-requests", "4",
               "--ee-requests-per-second", "2.5", "--ee-worker-processes", "2")
    assert ee.source == {"kind": "earthengine", "project": "p", "high_volume": False,
                         "endpoint": None, "dem": "srtm", "max_concurrent_requests": 4,
                         "requests_per_second": 2.5, "worker_processes": 2}
    c = parse("compare", "--reference", "r/{year}", "--out", "o", "--years", "2013-2014",
              "--kde-bandwidth", "300", "--no-figures")
    assert isinstance(c, CompareConfig)
    assert (c.years, c.kde_bandwidth_m, c.figures) == ((2013, 2014), 300.0, False)
    t = parse("terrain", "dem.tif", "--out", "t", "--products", "slope, hillshade")
    assert t.products == ("slope", "hillshade")
    s = parse("synth", "--out", "w", "--years", "2014-2015", "--event-year", "2014",
              "--no-clouds")
    assert (s.config.years, s.config.clouds) == ((2014, 2015), False)


def test_predict_refuses_an_epsg_in_feet_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["predict", "--model", str(tmp_path / "m"), "--out", str(out), "--source",
            "geotiff", "--images", str(tmp_path / "s2.tif"), "--aoi=-74.0,40.70,-73.99,40.71",
            "--start", "2020-06-01", "--end", "2020-09-30"]
    assert cli.main([*argv, "--epsg", "2263"]) == 2
    err = capsys.readouterr().err
    assert "EPSG:2263" in err and "US survey foot" in err and "not metres" in err
    assert "UTM zone" in err and "leave --epsg unset" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(InputError, match="EPSG:2229 .* measures in US survey foot"):
        PredictConfig(model="m", out=str(out), aoi="1,2,3,4", source={"kind": "synthetic"},
                      start="2020-06-01", end="2020-09-30", epsg=2229)
    assert PredictConfig(model="m", out=str(out), aoi="1,2,3,4", source={"kind": "synthetic"},
                         start="2020-06-01", end="2020-09-30", epsg=32618).epsg == 32618


@pytest.mark.parametrize("argv, message", [
    (["export", "--out", "o", "--aoi", "a", "--split", "0.7,0.3"], "three fractions"),
    (["export", "--out", "o", "--aoi", "a", "--classes", "scarp"], "NAME=ID pairs"),
    (["predict", "--model", "m", "--out", "o", "--scale", "big"], "--scale must be a number"),
])
def test_a_bad_flag_value_is_a_one_line_error(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_training_flags_are_the_train_config_settings_with_a_help():
    from model.train.config import TrainConfig, load_config

    settings = [f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    train = {f.name for _, f in _options("train")}
    assert train == {"data", "out", "config", "val_data", *settings}
    tune = {f.name for _, f in _options("tune")}
    assert tune == {"data", "out", "config", "val_data", "lr", "filters", "batch_size",
                    *(set(settings) - {"base_filters", "lr", "batch_size"})}
    args = cli.build_parser("train").parse_args(
        ["train", "--data", "d", "--out", "o", "--depth", "3", "--no-batch-norm",
         "--augment", "none", "--loss", "dice", "--lr", "1e-4"])
    options = from_namespace(COMMANDS["train"].options_class(), args)
    assert options.settings == {"depth": 3, "batch_norm": False, "augment": "none",
                                "loss": "dice", "lr": 1e-4}
    cfg, _ = load_config(None, options.settings)
    assert (cfg.depth, cfg.batch_norm, cfg.augment.enabled, cfg.lr) == (3, False, False, 1e-4)
    args = cli.build_parser("tune").parse_args(
        ["tune", "--data", "d", "--out", "o", "--lr", "1e-3,1e-4", "--filters", "8,16"])
    tune_options = from_namespace(COMMANDS["tune"].options_class(), args)
    assert tune_options.grid() == {"lr": [1e-3, 1e-4], "base_filters": [8, 16]}


def test_options_match_the_functions_they_feed():
    """Where an options class lists a library function's parameters, they agree."""
    from model.train import evaluate
    from pipelines.geo.terrain import write_terrain
    from pipelines.import_l4s import import_l4s
    from pipelines.options.import_l4s import ImportL4SOptions
    from pipelines.options.terrain import TerrainOptions
    from pipelines.options.train import EvaluateOptions

    for cls, fn in ((EvaluateOptions, evaluate), (TerrainOptions, write_terrain),
                    (ImportL4SOptions, import_l4s)):
        params = inspect.signature(fn).parameters
        for f in dataclasses.fields(cls):
            assert f.name in params, (cls.__name__, f.name)
            default = params[f.name].default
            if default is inspect.Parameter.empty:
                assert default_of(f) is dataclasses.MISSING, (cls.__name__, f.name)
            else:
                assert default == default_of(f), (cls.__name__, f.name)


def test_choices_are_the_ones_the_stages_accept():
    import typing as t

    from pipelines.geo.compare_metrics import CRITERIA
    from pipelines.options.compare import MATCHES
    from pipelines.options.export import COMPRESSIONS
    from pipelines.shards import COMPRESSIONS as SHARD_COMPRESSIONS
    from pipelines.sources.earthengine import DEMS, EEConfig

    assert MATCHES == CRITERIA
    assert set(COMPRESSIONS) == set(SHARD_COMPRESSIONS)
    assert tuple(DEMS) == EE_DEMS
    assert t.get_args(t.get_type_hints(EEConfig)["cloud_mask"]) == EE_CLOUD_MASKS


def test_export_options_defaults_are_the_export_config_defaults():
    from pipelines.export import ExportConfig
    from pipelines.options.export import ExportOptions

    spec = {"kind": "synthetic", "world": "w"}
    assert ExportOptions(out="o", aoi="a", source=spec).to_config() == ExportConfig(
        source=spec, aoi="a", out="o")


# --------------------------------------------------------------------------- the YAML
def _sample(f: dataclasses.Field):
    """A value of the field's type that is not its default."""
    tp = base_type(typing.get_type_hints(SourceOptions)[f.name])
    if f.metadata.get("choices"):
        return f.metadata["choices"][-1]
    if tp is bool:
        return not default_of(f)
    if tp is int:
        return 3
    if tp is float:
        return -9999.0
    if f.name == "images":
        return ["s2_{year}.tif"]
    if f.name == "reference_images":
        return {"pre": ["pre.tif"]}
    if f.name == "band_map":
        return {"B4": 1, "B8": 2}
    if f.name == "scale":
        return 0.0001
    return "x"


SOURCE_CASES = [(kind, f.name) for f in dataclasses.fields(SourceOptions)
                for kind in f.metadata["kinds"] if f.name != "kind"]
REQUIRED = {"synthetic": {"world": "w"}, "geotiff": {"images": ["a.tif"]},
            "earthengine": {}}


@pytest.mark.parametrize("kind, name", SOURCE_CASES)
def test_the_scan_source_takes_every_source_option_the_cli_offers(kind, name):
    f = next(f for f in dataclasses.fields(SourceOptions) if f.name == name)
    key = f.metadata.get("key", name)
    spec = {"kind": kind, **REQUIRED[kind], key: _sample(f)}
    assert check_spec(spec) == spec  # accepted, and kept as written (fingerprints)


def test_source_keys_are_the_options_of_each_kind():
    from pipelines.sources.earthengine import EEConfig

    # every source option is a key of some kind's spec, and each kind's keys are its own
    assert all(f.metadata["kinds"] for f in dataclasses.fields(SourceOptions))
    for kind in KINDS:
        ours = spec_keys(kind)
        assert all(kind in f.metadata["kinds"] for f in ours.values())
    assert set(spec_keys("synthetic")) == {"world", "mask_clouds"}
    ee = set(spec_keys("earthengine")) | set(passthrough_keys("earthengine"))
    assert ee == {f.name for f in dataclasses.fields(EEConfig)} - {"start", "end"} | \
        {"token_env"}


@pytest.mark.parametrize("spec, message", [
    ({"kind": "synthetic", "world": "w", "mask_cloud": False},
     "Unknown key source.mask_cloud for a synthetic source (did you mean mask_clouds?); "
     "known keys: kind, world, mask_clouds."),
    ({"kind": "synthetic", "world": "w", "images": ["a.tif"]}, "Unknown key source.images"),
    ({"kind": "geotiff", "images": "a.tif", "mask_zero": "yes"},
     "source.mask_zero must be bool, got 'yes'."),
    ({"kind": "earthengine", "dem": "gtopo"}, "source.dem must be one of glo30"),
    ({"kind": "synthetic", "world": "w", "start": "2016-01-01"},
     "(the scan's periods give the date window)"),
])
def test_the_scan_source_refuses_what_no_option_takes(spec, message):
    with pytest.raises(ConfigError) as exc:
        check_spec(spec)
    assert message in str(exc.value)


def _scan_doc(tmp_path: Path, **changes) -> dict:
    doc = {"name": "s", "region": "1,2,3,4", "model": "model", "out": "out",
           "source": {"kind": "synthetic", "world": "world"}, "periods": {"years": 2016}}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("block, cls", [("predict", PredictConfig),
                                         ("compare", CompareConfig)])
def test_scan_blocks_take_exactly_the_yaml_options(tmp_path, block, cls):
    from pipelines.scan import ScanConfig

    keys = yaml_keys(cls)
    assert keys and "source" not in keys and "out" not in keys
    for f in dataclasses.fields(cls):
        value = default_of(f)
        if f.name in keys:  # every YAML option is accepted with its default value
            cfg = ScanConfig.from_dict(_scan_doc(tmp_path, **{block: {f.name: value}}),
                                       str(tmp_path))
            assert getattr(cfg, block) == {f.name: value}
        else:  # the others are the scan's to set
            with pytest.raises(ConfigError, match=f"{block}.{f.name} is set by the scan"):
                ScanConfig.from_dict(_scan_doc(tmp_path, **{block: {f.name: value}}),
                                     str(tmp_path))


def test_scan_source_paths_follow_the_kind(tmp_path):
    """A geotiff DEM is a path relative to the scan file; an Earth Engine DEM is a name."""
    from pipelines.scan import ScanConfig

    ee = ScanConfig.from_dict(_scan_doc(tmp_path, source={"kind": "earthengine",
                                                          "dem": "glo30"}), str(tmp_path))
    assert ee.source["dem"] == "glo30"
    geo = ScanConfig.from_dict(_scan_doc(tmp_path, source={
        "kind": "geotiff", "images": "s2.tif", "dem": "dem.tif",
        "reference_images": {"pre": "pre.tif"}}), str(tmp_path))
    assert geo.source["images"] == [str(tmp_path / "s2.tif")]
    assert geo.source["dem"] == str(tmp_path / "dem.tif")
    assert geo.source["reference_images"] == {"pre": str(tmp_path / "pre.tif")}
    syn = ScanConfig.from_dict(_scan_doc(tmp_path, source={
        "kind": "synthetic", "world": "world", "mask_clouds": False}), str(tmp_path))
    assert syn.source == {"kind": "synthetic", "world": str(tmp_path / "world"),
                          "mask_clouds": False}
    assert syn.predict_config(syn.periods[0]).source["mask_clouds"] is False


# --------------------------------------------------------------------------- template
def test_template_parameters_are_the_options_marked_for_it():
    expected: dict[str, set[str]] = {}
    for command in TEMPLATE_COMMANDS:
        for _, f in _options(command):
            name = flag_of(f)[2:].replace("-", "_")
            if f.metadata.get("template", True):
                expected.setdefault(name, set()).add(command)
            else:
                assert command not in getattr(PARAMS.get(name), "commands", ()), name
    assert {n: set(p.commands) for n, p in PARAMS.items()} == expected
    assert {"keep_clouds", "min_area", "dry_run", "overwrite"} <= set(PARAMS)
    assert "submit_only" not in PARAMS and "ee_token_env" not in PARAMS


def _value(param, f: dataclasses.Field) -> str:
    """A launch's text for ``param`` that is not the default of option ``f``."""
    if param.kind in ("switch", "toggle"):
        return "true" if param.kind == "switch" else "false"
    if f.metadata.get("choices"):
        return str(f.metadata["choices"][-1])
    return "gs://b/a.tif,gs://b/b.tif" if param.kind == "list" else "7"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_template_parameter_is_accepted_by_its_commands(name):
    from tests.test_infra import flex_main

    param = PARAMS[name]
    for command in param.commands:
        f = next(f for _, f in _options(command) if flag_of(f) == param.flag)
        argv = flex_main.build_argv({"command": command, name: _value(param, f)})
        argv = _minimal_argv(command) + argv[1:]  # the required options, then this one
        args, extra = cli.build_parser(command).parse_known_args(argv)
        assert extra == [] and args.command == command
        assert getattr(args, f.name) != default_of(f), (command, name)  # it reached f


def test_template_metadata_file_is_generated_from_the_options():
    path = ROOT / "infra" / "scan-template-metadata.json"
    assert path.read_text() == render(), (
        "infra/scan-template-metadata.json is out of date: run "
        "`python -m pipelines.options.template > infra/scan-template-metadata.json`")
