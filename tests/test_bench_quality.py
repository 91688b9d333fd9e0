"""bench/quality.py's variants of the first seed: other reference images, another stem,
other training seeds."""

from __future__ import annotations

import json

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
    ["--train-seeds", "1,x"],      # not an integer
    ["--train-seeds", "1,1"],      # one seed twice
    ["--train-seeds", "-1"],       # negative
    ["--base-filters", "w=0"],     # not positive
    ["--base-filters", "w=x"],     # not an integer
    ["--base-filters", "w="],      # no value
])
def test_bad_variant_flags_are_refused_before_any_study_runs(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _quality().main(["--seeds", "42", "--out", str(tmp_path / "out"), *flag])
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_seeds_are_variants_that_change_only_the_training_seed(tmp_path):
    q = _quality()
    others = q.variant_settings([], ["nostem="], " 1, 2")
    assert others == {"nostem": {"stem": ()}, "train1": {"train_seed": 1},
                      "train2": {"train_seed": 2}}
    demo = DemoConfig(out=str(tmp_path))
    one = q._config(str(tmp_path), 42, "train1", False, others)
    assert one.train_seed == 1 and one.training_seed == 1 and one.seed == 42
    assert one == DemoConfig(out=str(tmp_path), train_seed=1) and demo.training_seed == 42


def test_ema_applies_to_every_study_and_a_bad_momentum_is_refused_before_any(tmp_path,
                                                                           capsys):
    q = _quality()
    others = q.variant_settings(["2refs=base=-4y..-1y:greenest"], [], "1")
    for variant in ("temporal", "single-date", "2refs", "train1"):
        assert q._config(str(tmp_path), 42, variant, False, others, 0.99).ema == 0.99
        assert q._config(str(tmp_path), 42, variant, False, others).ema == 0.0
    assert q._config(str(tmp_path), 42, "train1", False, others, 0.99) == DemoConfig(
        out=str(tmp_path), train_seed=1, ema=0.99)
    with pytest.raises(SystemExit) as exc:
        q.main(["--seeds", "42", "--out", str(tmp_path / "out"), "--ema", "1.5"])
    assert exc.value.code == 2 and "ema must be a number in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_training_spread_covers_each_retrained_seed_and_its_training_seeds_only():
    q = _quality()

    def row(seed, variant, f1, n):
        return {"seed": seed, "variant": variant, "held_out": {
            "2013": {"f1": f1, "predicted_count": n, "reference_count": 29}}}

    rows = [row(42, "temporal", 0.8, 30), row(42, "2refs", 0.2, 90), row(42, "train1", 0.7, 25),
            row(42, "train2", 0.75, 33), row(7, "temporal", 0.1, 1), row(123, "temporal", 0.6, 20),
            row(123, "train1", 0.65, 22)]
    others = {"2refs": {"references": ("prev=-1y",)}, "train1": {"train_seed": 1},
              "train2": {"train_seed": 2}}
    assert q.training_spread(rows, others) == {
        "42": {"2013": {"f1": [0.7, 0.8], "predicted_count": [25, 33], "reference_count": 29,
                        "runs": 3}},
        "123": {"2013": {"f1": [0.6, 0.65], "predicted_count": [20, 22], "reference_count": 29,
                         "runs": 2}}}  # seed 7 has no training-seed variant: no spread
    assert q.training_spread(rows, {"2refs": others["2refs"]}) == {}  # no training seeds


def test_training_seed_variants_run_for_the_named_seeds_other_variants_for_the_first():
    q = _quality()
    others = q.variant_settings(["2refs=prev=-1y"], [], "1,2", ["w24=24"])
    seeds = [42, 7, 123]
    spread = q.seed_subset("7,42", seeds, "--train-seeds-for")
    assert spread == [7, 42]
    assert q.study_variants(42, seeds, [42], spread, others) == [
        "temporal", "single-date", "2refs", "w24", "train1", "train2"]
    assert q.study_variants(7, seeds, [42], spread, others) == ["temporal", "train1", "train2"]
    assert q.study_variants(123, seeds, [42], spread, others) == ["temporal"]
    assert q.seed_subset(None, seeds, "--train-seeds-for") == [42]  # default: the first
    for bad in ("5", "x", "7,,9"):
        with pytest.raises(ValueError, match="--train-seeds-for"):
            q.seed_subset(bad, seeds, "--train-seeds-for")


def test_a_train_seeds_for_seed_outside_seeds_is_refused_before_any_study(tmp_path, capsys):
    q = _quality()
    with pytest.raises(SystemExit) as exc:
        q.main(["--seeds", "42,7", "--out", str(tmp_path / "out"), "--train-seeds", "1",
                "--train-seeds-for", "123"])
    assert exc.value.code == 2 and "--train-seeds-for '123'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, named", [
    (["--seeds", "42,7", "--single-date-seeds", "8"], "--single-date-seeds '8'"),
    (["--seeds", "42,x"], "--seeds '42,x'"),
    (["--seeds", "42,7,42"], "--seeds '42,7,42'"),
    (["--seeds", ""], "--seeds ''"),
])
def test_bad_seed_lists_are_refused_before_any_study(argv, named, tmp_path, capsys):
    """A single-date seed outside --seeds once ran no single-date study and said nothing;
    a seed named twice would run two studies into one folder."""
    q = _quality()
    with pytest.raises(SystemExit) as exc:
        q.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_seed_lists_parse_to_the_studies_they_name():
    q = _quality()
    assert q.parse_seeds(" 42, 7 ,123,") == [42, 7, 123]
    seeds = [42, 7, 123]
    assert q.seed_subset("", seeds, "--single-date-seeds") == []  # '': no single-date study
    assert q.seed_subset("123", seeds, "--single-date-seeds") == [123]
    assert q.study_variants(123, seeds, [123], [42], {}) == ["temporal", "single-date"]


def test_breakdowns_are_read_for_every_temporal_study_not_the_single_date_one(
        tmp_path, monkeypatch):
    """The recovery and near-line tables cover the first seed's variants of the demo's
    stack too (they are what a variant is compared on); the single-date study has none.
    The object counts (what the count gaps list) are read for every study."""
    q = _quality()
    read = []
    for name in ("recovery_breakdown", "scar_decisions", "object_breakdown"):
        monkeypatch.setattr(q, name, lambda d, name=name: read.append((name, d)) or {})
    results = {"evaluate": {}, "compare": {"held_out": {}}}
    variants = ("temporal", "base3", "train1", "single-date")
    for variant in variants:
        cfg = DemoConfig(out=str(tmp_path / variant))
        row = q._row(cfg, 42, variant, 1.0, results)
        assert ("recovery" in row and "near_line" in row) == (variant != "single-date")
        assert "objects" in row
    temporal = sorted(str(tmp_path / v) for v in ("temporal", "base3", "train1"))
    assert sorted(d for n, d in read if n == "recovery_breakdown") == temporal
    assert sorted(d for n, d in read if n == "scar_decisions") == temporal
    assert sorted(d for n, d in read if n == "object_breakdown") == sorted(
        str(tmp_path / v) for v in variants)


def test_count_gaps_list_a_single_date_study_too(tmp_path):
    """A single-date study's count off by more than 30% is listed like any other study's."""
    q = _quality()
    out = tmp_path / "single-date"
    (out / "report").mkdir(parents=True)
    obj = {"n_reference": 20, "n_predicted": 8, "n_found": 8, "n_missed": 12,
           "n_false_alarms": 0, "n_fragmented": 0, "merges": 0, "n_reference_in_merges": 0}
    (out / "report" / "metrics.json").write_text(json.dumps({"years": {"2019": {"object": obj}}}))
    results = {"evaluate": {}, "compare": {"held_out": {}}}
    row = q._row(DemoConfig(out=str(out)), 42, "single-date", 1.0, results)
    assert q.count_gaps([row]) == [
        "seed 42 single-date 2019: 8 predicted / 20 reference: 12 missed, 0 false alarms, "
        "0 predicted over 2+ landslides (0 landslides), 0 landslides in 2+ pieces"]


def test_a_base_filters_variant_changes_only_the_width(tmp_path):
    q = _quality()
    others = q.variant_settings([], [], "", ["wide24=24"])
    assert others == {"wide24": {"base_filters": 24}}
    wide = q._config(str(tmp_path), 42, "wide24", False, others)
    assert wide == DemoConfig(out=str(tmp_path), base_filters=24)
    assert DemoConfig(out=str(tmp_path)).base_filters == 16


def test_near_line_scars_decided_right_split_by_their_distance_to_the_line():
    q = _quality()

    def scar(rec, marked, pixels=100):
        return {"recovery": rec, "inventoried": rec < 0.5, "marked": marked, "pixels": pixels}

    near = {"2018": {"scars": [scar(0.48, 74), scar(0.52, 89), scar(0.52, 50),  # right, no, right
                               scar(0.42, 10)]},  # outside the band, inventoried, missed
            "2019": {"scars": [scar(0.49, 51), scar(0.58, 0), scar(0.55, 60)]}}
    assert q.decided_right(near) == ((3, 4), (1, 3))
    assert q.decided_right({}) == ((0, 0), (0, 0))



def test_the_target_line_does_not_round_a_shortfall_up_to_its_target(capsys):
    """At three decimals seed 42's 2018 F1 of 0.7496 printed as 0.750, the 0.75 asked."""
    q = _quality()
    cell = {"f1": 0.74959, "precision": 0.72, "recall": 0.79, "predicted_count": 31,
            "reference_count": 24}
    q.print_table([{"seed": 42, "variant": "temporal", "held_out": {"2018": cell},
                    "evaluate": {"base": {"f1": 0.86}, "finetuned": {"f1": 0.87}},
                    "seconds": 1.0}])
    assert "seed 42: min F1 0.7496 (2018)" in capsys.readouterr().out
