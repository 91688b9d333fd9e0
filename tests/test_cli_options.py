"""Unknown options stop every command before it runs, Beam stages included (issue 17, 6)."""

from __future__ import annotations

import pytest

from pipelines import cli


@pytest.mark.parametrize("argv, typo, hint", [
    (["predict", "--model", "m", "--out", "{out}", "--treshold", "0.9"], "--treshold",
     "--threshold"),
    (["export", "--out", "{out}", "--aoi", "a.geojson", "--negative-fracton", "0"],
     "--negative-fracton", "--negative-fraction"),
    (["scan", "--config", "scan.yaml", "--dryrun"], "--dryrun", "--dry-run"),
    (["export", "--out", "{out}", "--aoi", "a.geojson", "--runer", "DirectRunner"], "--runer",
     "--runner"),
])
def test_a_mistyped_option_is_refused_with_a_hint(tmp_path, capsys, argv, typo, hint):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main([a.replace("{out}", str(out)) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert typo in err and f"did you mean {hint}" in err
    assert not out.exists()  # nothing ran


def test_beam_pipeline_options_still_pass(tmp_path, capsys):
    """A real Beam option is accepted: the command goes on to its own input checks."""
    code = cli.main(["predict", "--model", str(tmp_path / "no-model"), "--out",
                     str(tmp_path / "out"), "--aoi", "85.3,28.1,85.31,28.11", "--start",
                     "2016-01-01", "--end", "2016-12-31", "--direct_num_workers", "2",
                     "--runner=DirectRunner"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unrecognized" not in err and "no-model" in err


PREDICT = ["predict", "--model", "m", "--out", "o", "--aoi", "85,27,86,28", "--start",
           "2020-01-01", "--end", "2021-01-01"]


@pytest.fixture
def ran(monkeypatch) -> list:
    """Beam commands stubbed: what each received (options, Beam arguments)."""
    import pipelines.predict.run
    import pipelines.scan.run

    calls: list = []

    def record(options, beam_args=None):
        calls.append((options, list(beam_args or [])))
        return 0

    monkeypatch.setattr(pipelines.predict.run, "predict_command", record)
    monkeypatch.setattr(pipelines.scan.run, "scan_command", record)
    return calls


@pytest.mark.parametrize("argv, words, says", [
    # what `--images /data/s2_*.tif` becomes once the shell expands the glob
    ([*PREDICT, "--source", "geotiff", "--images", "/data/s2_a.tif", "/data/s2_b.tif",
      "/data/s2_c.tif"], "/data/s2_b.tif /data/s2_c.tif", "quote globs"),
    (["scan", "--config", "scan.yaml", "-periods", "2019"], "-periods (did you mean "
     "--periods?) 2019", "two dashes"),
    ([*PREDICT, "--runner", "DirectRunner", "stray"], "stray", "is no option's value"),
    ([*PREDICT, "-v"], "-v (an option of `landslides` itself: put it before predict)", ""),
])
def test_a_stray_word_after_a_beam_stage_is_refused(ran, capsys, argv, words, says):
    """Beam would discard it (and the run go on without it): refused before running."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {words};" in err and says in err
    assert ran == []


def test_beam_options_with_separate_values_reach_the_stage(ran):
    beam = ["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1",
            "--num_workers", "3", "--experiments=a", "--experiments", "b",
            "--temp_location", "gs://b/tmp", "--save_main_session",
            "--dask_client_address", "localhost:8786"]
    assert cli.main(PREDICT + beam) == 0
    assert cli.main(["scan", "--config", "scan.yaml", "--periods", "2019", *beam]) == 0
    assert [args for _, args in ran] == [beam, beam]
    assert ran[1][0].periods == "2019"


def test_a_beam_option_value_beam_cannot_parse_is_refused(ran, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*PREDICT, "--num_workers", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--num_workers" in err and "'many'" in err
    assert ran == []
