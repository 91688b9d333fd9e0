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
