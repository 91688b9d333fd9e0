"""bench/quality.py's variants of the first seed: other reference images, another stem."""

from __future__ import annotations

import pytest

from pipelines.demo import DemoConfig
from tests.scripts import load_script


def _quality():
    return load_script("bench/quality.py")


def test_variants_replace_only_the_setting_they_name(tmp_path):
    q = _quality()
    others = {"nostem": {"stem": ()}, "2refs": {"references": ("prev=-1y",)}}
    demo = DemoConfig(out=str(tmp_path))
    nostem = q._config(str(tmp_path), 42, "nostem", False, others)
    assert nostem.stem == () and nostem.references == demo.references
    refs = q._config(str(tmp_path), 42, "2refs", False, others)
    assert refs.references == ("prev=-1y",) and refs.stem == demo.stem
    single = q._config(str(tmp_path), 42, "single-date", False, others)
    assert single.references == () and single.change == () and single.stem == demo.stem
    assert q._config(str(tmp_path), 42, "temporal", False, others) == demo


@pytest.mark.parametrize("flag", [
    ["--stem", "w=64,x"],          # not integers
    ["--stem", "w64"],             # no '='
    ["--stem", "temporal=64"],     # a built-in variant's name
    ["--stem", "a=64", "--stack", "a=prev=-1y"],  # one name twice
    ["--stack", "refs="],          # no references
])
def test_bad_variant_flags_are_refused_before_any_study_runs(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _quality().main(["--seeds", "42", "--out", str(tmp_path / "out"), *flag])
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
