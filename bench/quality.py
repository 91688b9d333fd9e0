"""Model quality of the demo study, measured on held-out areas, for several world seeds.

For every seed it runs the demo study (``landslides demo``: world, held-out blocks,
export, train, fine-tune, sweeps, comparison) with the demo's temporal input stack, and
for the first seed (``--single-date-seeds``) again on the same world with a single-date
stack (the target image alone), and prints one table side by side:

* per year, on the held-out blocks only, over whole sweeps: pixel precision, recall and
  F1, and predicted vs reference landslide counts (observed pixels only);
* base vs fine-tuned model on patches of the held-out blocks (all years);
* the seconds each study took (each study runs in a fresh Python process, as ``make demo``
  does, so one study's time does not carry what the studies before it left in memory);
* for the temporal studies (the demo's stack and the first seed's variants), per year, on
  the held-out observed pixels of each sweep's mask: how much of each recovery stage of
  the world's scars the mask marks as landslide (:func:`recovery_breakdown`: fresh, young
  and older scars are in the inventory, just dropped and dropped ones no longer are; "no
  scar" is everything else), so where the misses and false alarms lie on the inventories'
  "half regrown" line is read, not guessed; and the large scars within 0.1 of that line,
  with the F1 the year would reach if those within 0.05 of it were decided right
  (:func:`scar_decisions`), and how many of those scars each study decided right
  (:func:`decided_right`).

It writes every figure to ``--json`` (default ``bench-quality.json``; the breakdowns under
each temporal row's ``recovery`` and ``near_line``; every row's landslide-by-landslide
counts under ``objects``). Run it with ``make bench-quality`` or
``.venv/bin/python bench/quality.py --seeds 42,7,123``. Each study takes minutes (about as
long as ``make demo``); ``--quick`` uses the quick demo; ``--stack NAME=REF;REF`` also runs
the first seed with other reference images, ``--stem NAME=WIDTHS`` with another stem,
``--base-filters NAME=N`` with a wider or narrower U-Net, and
``--train-seeds 1,2`` with other training seeds on the same world and shards (for the
seeds of ``--train-seeds-for``, default the first; it prints, per seed, the per-year range
of F1 and counts over them: how much of a row is the training run);
``--ema 0.99`` trains every study's models with a moving average of the weights. A
finished study is only re-read (the demo resumes; its time is then the stages' recorded
times); ``--existing`` reads the studies already in ``--out`` and runs nothing, even where
the code changed since (it stops if a study is unfinished).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from pipelines import fsio
from pipelines.demo import WORLD_FIELDS, DemoConfig, StageRunner, run_demo, share_world, stages
from pipelines.errors import ConfigError, InputError
from pipelines.synth.landslides import DRAWN_MAX_RECOVERY

log = logging.getLogger("bench.quality")

VARIANTS = ("temporal", "single-date")
#: Recovery stages of a scar (rec: 0 fresh, 0.5 when it leaves the inventories, see
#: pipelines.synth.landslides.recovery); scars from DRAWN_MAX_RECOVERY on are no longer
#: drawn.
RECOVERY_STAGES = (("fresh", 0.0, 0.1), ("young", 0.1, 0.3), ("older", 0.3, 0.5),
                   ("just dropped", 0.5, 0.7), ("dropped", 0.7, DRAWN_MAX_RECOVERY))
#: The stages, then pixels with no scar drawn.
RECOVERY_NAMES = (*(name for name, _, _ in RECOVERY_STAGES), "no scar")
#: The stages of scars in the inventories (rec < 0.5).
INVENTORIED = ("fresh", "young", "older")


#: A variant of a seed's study named on the command line: the demo's settings with some of
#: them replaced (``references`` for ``--stack``, ``stem`` for ``--stem``, ``base_filters``
#: for ``--base-filters``: the first seed's; ``train_seed`` for ``--train-seeds``: the
#: seeds of ``--train-seeds-for``).
Others = dict[str, dict[str, Any]]


def _config(out: str, seed: int, variant: str, quick: bool,
            others: Others | None = None, ema: float = 0.0) -> DemoConfig:
    demo = DemoConfig(out=out, seed=seed, quick=quick, ema=ema)
    if variant == "temporal":
        return demo
    if others and variant in others:  # other references, another stem or training seed
        return dataclasses.replace(demo, **others[variant])
    return dataclasses.replace(demo, references=(), change=())


def run_study(out: str, seed: int, variant: str, quick: bool,
              others: Others | None = None, ema: float = 0.0) -> dict:
    cfg = _config(out, seed, variant, quick, others, ema)
    runner = StageRunner(cfg, stages(cfg))
    resumed = [s.name for s in runner.stages if runner.is_done(s)]
    t0 = time.monotonic()
    results = run_demo(cfg)
    seconds = time.monotonic() - t0
    row = _row(cfg, seed, variant, seconds, results)
    if resumed:  # this run's time is not the study's: report the stages' recorded times
        row["seconds"] = round(_recorded_seconds(runner), 1)
        row["resumed"] = resumed
    return row


def _recorded_seconds(runner: StageRunner) -> float:
    """The sum of the stage records' times (what each stage took when it last ran)."""
    total = 0.0
    for stage in runner.stages:
        rec = fsio.read_record(runner.record_path(stage)) or {}
        total += float(rec.get("seconds") or 0.0)
    return total


def run_study_process(out: str, seed: int, variant: str, quick: bool,
                      others: Others | None = None, ema: float = 0.0) -> dict:
    """:func:`run_study` in a fresh Python process (its log goes to this one's stderr)."""
    spec = {"out": out, "seed": seed, "variant": variant, "quick": quick, "ema": ema,
            "others": {k: {f: list(v) if isinstance(v, tuple) else v for f, v in o.items()}
                       for k, o in (others or {}).items()}}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--study",
                           json.dumps(spec)], stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the study {out} failed (exit {done.returncode}); its log is above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _study_child(text: str) -> int:
    spec = json.loads(text)
    others = {k: {f: tuple(v) if isinstance(v, list) else v for f, v in o.items()}
              for k, o in spec.pop("others").items()}
    row = run_study(others=others, **spec)
    print(json.dumps(row))
    return 0


def read_study(out: str, seed: int, variant: str, quick: bool,
               others: Others | None = None, ema: float = 0.0) -> dict:
    """The row of a study already finished in ``out``, from its stage records (runs nothing).

    Its seconds are the sum of the recorded stage times. A record whose fingerprint is not
    the current code's (a plain run would redo that stage) is read all the same, with a
    warning.

    Raises:
        SystemExit: a stage of the study has no record (the study is not finished).
    """
    cfg = _config(out, seed, variant, quick, others, ema)
    runner = StageRunner(cfg, stages(cfg))
    results: dict[str, dict] = {}
    missing, stale = [], []
    for stage in runner.stages:
        rec = fsio.read_record(runner.record_path(stage))
        if rec is None or "result" not in rec:
            missing.append(stage.name)
            continue
        if rec.get("fingerprint") != runner.fingerprint(stage):
            stale.append(stage.name)
        results[stage.name] = rec["result"]
    if missing:
        raise SystemExit(f"--existing: {out} is not a finished study (no record of "
                         f"{', '.join(missing)}); run it without --existing.")
    if stale:
        log.warning("%s: %s recorded by other code or settings (a run without --existing "
                    "would redo them); reading them as they are.", out, ", ".join(stale))
    return _row(cfg, seed, variant, _recorded_seconds(runner), results)


def _row(cfg: DemoConfig, seed: int, variant: str, seconds: float,
         results: dict[str, dict]) -> dict:
    row = {"seed": seed, "variant": variant, "seconds": round(seconds, 1),
           "stack": cfg.stack.describe(), "train_years": list(cfg.train_years),
           "evaluate": results["evaluate"], "held_out": results["compare"]["held_out"]}
    if variant != "single-date":  # the demo's stack and the first seed's variants of it
        try:
            row["recovery"] = recovery_breakdown(cfg.out)
            row["near_line"] = scar_decisions(cfg.out)
        except InputError as exc:  # e.g. a world generated with other numpy kernels
            log.warning("seed %s: no recovery table: %s", seed, exc)
            row["recovery"] = row["near_line"] = None
            row["recovery_error"] = str(exc)
    # every study, single-date too: the count gaps list each study (report/metrics.json only)
    row["objects"] = object_breakdown(cfg.out)
    return row


#: The comparison's object metrics kept per year (pipelines.geo.compare_metrics.object_metrics).
OBJECT_FIELDS = ("n_reference", "n_predicted", "n_found", "n_missed", "n_false_alarms",
                 "n_fragmented", "merges", "n_reference_in_merges")


def object_breakdown(study_dir: str) -> dict[str, dict[str, int]]:
    """Per year, the held-out comparison's landslide-by-landslide counts (``report/metrics.json``):
    found and missed references, false alarms, references in several pieces, merges."""
    metrics = fsio.read_json(os.path.join(study_dir, "report", "metrics.json"))
    out = {}
    for year, entry in sorted((metrics.get("years") or {}).items()):
        obj = entry.get("object") or {}
        out[year] = {k: int(obj[k]) for k in OBJECT_FIELDS if obj.get(k) is not None}
    return out


#: The issue's count target: predicted within this fraction of the reference count.
COUNT_TOLERANCE = 0.3


def count_within(predicted: int | None, reference: int | None) -> bool:
    """Whether a predicted count is within :data:`COUNT_TOLERANCE` of a (non-zero)
    reference count; False when either is missing or the reference is 0."""
    if not reference or predicted is None:
        return False
    return abs(predicted - reference) <= COUNT_TOLERANCE * reference


def count_gaps(rows: list[dict]) -> list[str]:
    """One line per study (seed, variant) and year whose predicted count is not
    :func:`count_within` the reference count, saying which landslides make the difference."""
    lines = []
    for r in rows:
        for year, o in (r.get("objects") or {}).items():
            n_ref, n_pred = o.get("n_reference"), o.get("n_predicted")
            if not n_ref or n_pred is None or count_within(n_pred, n_ref):
                continue
            lines.append(
                f"seed {r['seed']} {r['variant']} {year}: {n_pred} predicted / {n_ref} reference: "
                f"{o.get('n_missed', 0)} missed, {o.get('n_false_alarms', 0)} false alarms, "
                f"{o.get('merges', 0)} predicted over 2+ landslides "
                f"({o.get('n_reference_in_merges', 0)} landslides), "
                f"{o.get('n_fragmented', 0)} landslides in 2+ pieces")
    return lines


def _world_landslides(world_dir: str) -> tuple[list[Any], Any]:
    """``pipelines.synth.world_landslides`` of a study's world, regenerated once for the
    breakdowns that read it (~5 s each time); a rewritten ``world.json`` is read anew."""
    path = os.path.realpath(world_dir)
    return _regenerated(path, os.stat(os.path.join(path, "world.json")).st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _regenerated(world_dir: str, mtime_ns: int) -> tuple[list[Any], Any]:
    from pipelines.synth import world_landslides

    return world_landslides(world_dir)


def _held_out_masks(study_dir: str
                    ) -> Iterator[tuple[list[Any], int, Any, np.ndarray, np.ndarray]]:
    """The world's landslides and, per swept year, the mask's marked and scored pixels.

    Yields ``(slides, year, grid, marked, scored)`` for every year with a
    ``<study>/sweeps/<year>/mosaic/mask.tif``, read as the comparison reads it
    (``RasterMask.classify``: 1..254 landslide, 0 not, 255 and the file's nodata
    unobserved); ``scored`` keeps the held-out (``areas/eval_area.geojson``, pixel centres)
    observed pixels; ``slides`` are regenerated from ``world/world.json``.
    """
    import rasterio
    from pyproj import CRS
    from rasterio.features import geometry_mask

    from pipelines.compare.layers import RasterMask
    from pipelines.geo.grid import WGS84, PixelGrid, load_region, to_crs

    slides, wgrid = _world_landslides(os.path.join(study_dir, "world"))
    eval_area = load_region(os.path.join(study_dir, "areas", "eval_area.geojson")).geometry
    sweeps = os.path.join(study_dir, "sweeps")
    years = sorted(int(y) for y in os.listdir(sweeps) if y.isdigit()
                   and os.path.exists(os.path.join(sweeps, y, "mosaic", "mask.tif")))
    for year in years:
        mask_path = os.path.join(sweeps, str(year), "mosaic", "mask.tif")
        with rasterio.open(mask_path) as src:
            values = src.read(1)
            grid = PixelGrid.from_affine(src.crs.to_string(), src.transform, src.width,
                                         src.height)
            nodata = src.nodata
        if CRS.from_user_input(grid.crs) != CRS.from_user_input(wgrid.crs):
            raise ValueError(f"{study_dir}: the {year} mask is in {grid.crs}, the world in "
                             f"{wgrid.crs}; the world's scars are rasterized in its own CRS")
        marked, scored = RasterMask.classify(values, nodata, mask_path)
        area = to_crs(eval_area, WGS84, grid.crs)
        scored &= geometry_mask([area], out_shape=grid.shape, transform=grid.affine,
                                invert=True)
        yield slides, year, grid, marked, scored


def recovery_breakdown(study_dir: str) -> dict[str, dict[str, dict]]:
    """How much of each recovery stage of the world's scars a study's sweeps mark.

    For every swept year (``<study>/sweeps/<year>/mosaic/mask.tif``, read as the comparison
    reads it, ``RasterMask.classify``: 1..254 landslide, 0 not, 255 and the file's nodata
    unobserved), on the held-out (``areas/eval_area.geojson``, pixel centres) observed
    pixels of the mask: the recovery of the scar under each pixel
    (the world's landslides regenerated from ``world/world.json`` and rasterized on the
    mask's own grid, the most recent failure on top) binned into :data:`RECOVERY_STAGES`
    and "no scar".

    Returns:
        ``{year: {stage: {"pixels": n, "landslide": marked, "fraction": marked / n}}}``
        (stages in :data:`RECOVERY_NAMES` order; fraction None for no pixels).
    """
    from pipelines.synth.landslides import recovery_raster

    out: dict[str, dict[str, dict]] = {}
    for slides, year, grid, marked, scored in _held_out_masks(study_dir):
        rec = recovery_raster(slides, year, grid)
        bins = [(lo <= rec) & (rec < hi) for _, lo, hi in RECOVERY_STAGES]
        bins.append(np.isnan(rec))
        out[str(year)] = {}
        for name, in_bin in zip(RECOVERY_NAMES, bins):
            sel = scored & in_bin
            n, k = int(sel.sum()), int((sel & marked).sum())
            out[str(year)][name] = {"pixels": n, "landslide": k,
                                    "fraction": round(k / n, 4) if n else None}
    return out


#: Scars listed as deciding a year: recovery within 0.1 of the inventories' line (0.5) ...
NEAR_LINE = (0.4, 0.6)
#: ... with at least this many held-out observed pixels.
NEAR_LINE_MIN_PIXELS = 50
#: The recovery band scored as if decided right in ``f1_band_right``.
DECIDED_BAND = (0.45, 0.55)


def scar_decisions(study_dir: str) -> dict[str, dict]:
    """Per swept year, the large held-out scars near the inventories' half-regrown line
    and what deciding the scars closest to it right would do to the year's F1.

    The masks are read as :func:`recovery_breakdown` reads them; each pixel belongs to the
    scar its year's image draws there (``scar_raster``: the most recent failure on top), in
    the inventory when that failure's recovery is below 0.5 (the comparison's reference
    also holds an inventoried scar overdrawn by a newer one past the line: a few pixels,
    see ``recovery_raster``). The pixel counts come from the comparison's
    ``report/metrics.json`` (``years.<year>.pixel``: ``tp_px``, ``fp_px``, ``fn_px``).

    Returns:
        ``{year: {"scars": [...], "band_missed": n, "band_false_alarms": n, "f1": f,
        "f1_band_right": f}}``: ``scars`` the scars with recovery in :data:`NEAR_LINE` and
        at least :data:`NEAR_LINE_MIN_PIXELS` scored pixels, largest first (``id``,
        ``failure_year`` the year of the failure drawn, ``trigger_year`` the landslide's
        first, ``recovery``, ``inventoried``, ``pixels``, ``marked``); ``band_*`` the
        inventoried pixels left unmarked and the marked pixels not inventoried on scars with
        recovery in :data:`DECIDED_BAND`; ``f1_band_right`` the F1 with those pixels scored
        right (None where the comparison has no pixel counts).
    """
    from pipelines.synth.landslides import scar_raster

    metrics = fsio.read_json(os.path.join(study_dir, "report", "metrics.json"))
    out: dict[str, dict] = {}
    for slides, year, grid, marked, scored in _held_out_masks(study_dir):
        labels, states = scar_raster(slides, year, grid)
        rec = np.array([np.nan] + [r for _, _, r in states])
        n_px = np.bincount(labels[scored], minlength=len(rec))
        n_marked = np.bincount(labels[scored & marked], minlength=len(rec))
        scars = []
        for i, (ls, d, r) in enumerate(states, start=1):
            if NEAR_LINE[0] <= r < NEAR_LINE[1] and n_px[i] >= NEAR_LINE_MIN_PIXELS:
                scars.append({"id": int(ls.lid), "failure_year": int(d.year),
                              "trigger_year": int(ls.trigger_year), "recovery": round(r, 3),
                              "inventoried": bool(r < 0.5), "pixels": int(n_px[i]),
                              "marked": int(n_marked[i])})
        scars.sort(key=lambda c: -c["pixels"])
        band = (rec >= DECIDED_BAND[0]) & (rec < DECIDED_BAND[1])
        inventoried = rec < 0.5
        missed = int((n_px - n_marked)[band & inventoried].sum())
        false_alarms = int(n_marked[band & ~inventoried].sum())
        pixel = ((metrics.get("years") or {}).get(str(year)) or {}).get("pixel") or {}
        f1 = right = None
        if all(k in pixel for k in ("tp_px", "fp_px", "fn_px")):
            tp, fp, fn = pixel["tp_px"], pixel["fp_px"], pixel["fn_px"]
            f1 = _f1(tp, fp, fn)
            right = _f1(tp + missed, fp - false_alarms, fn - missed)
        out[str(year)] = {"scars": scars, "band_missed": missed,
                          "band_false_alarms": false_alarms, "f1": f1, "f1_band_right": right}
    return out


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:5.2f}"


def print_table(rows: list[dict]) -> None:
    years = sorted({y for r in rows for y in r["held_out"]})
    print("\nHeld-out blocks, whole sweeps, per year: F1 (precision/recall), predicted/reference "
          "count")
    head = f"{'seed':>5} {'stack':12}" + "".join(f" {y:>22}" for y in years)
    print(head)
    for r in rows:
        cells = []
        for y in years:
            m = r["held_out"].get(y, {})
            cells.append(f" {_fmt(m.get('f1'))} ({_fmt(m.get('precision')).strip()}/"
                         f"{_fmt(m.get('recall')).strip()}) {m.get('predicted_count')}/"
                         f"{m.get('reference_count')}".rjust(23))
        print(f"{r['seed']:>5} {r['variant']:12}" + "".join(cells))
    print("\nPatches of the held-out blocks (all years): base vs fine-tuned F1, study time")
    for r in rows:
        ev = r["evaluate"]
        print(f"{r['seed']:>5} {r['variant']:12} base F1 {_fmt(ev['base'].get('f1'))}  "
              f"fine-tuned F1 {_fmt(ev['finetuned'].get('f1'))}  {r['seconds']:.0f} s"
              + (" (stages' recorded times: resumed)" if r.get("resumed") else ""))
    targets = []
    for r in rows:
        if r["variant"] != "temporal":
            continue
        f1s = {y: m.get("f1") or 0.0 for y, m in r["held_out"].items()}
        counts_ok = all(count_within(m.get("predicted_count"), m.get("reference_count"))
                        for m in r["held_out"].values())
        ev = r["evaluate"]
        beats = ev["finetuned"]["f1"] > ev["base"]["f1"]
        # four decimals: at three, 0.7496 printed as 0.750 and read as the 0.75 reached
        targets.append(f"seed {r['seed']}: min F1 {min(f1s.values()):.4f} "
                       f"({min(f1s, key=lambda y: f1s[y])}), counts within 30% every year: "
                       f"{'yes' if counts_ok else 'no'}, fine-tuned beats base: "
                       f"{'yes' if beats else 'no'}")
    print("\n" + "\n".join(targets))
    gaps = count_gaps(rows)
    if gaps:
        print(f"\nCounts more than {COUNT_TOLERANCE:.0%} off, landslide by landslide (a match: "
              "10% overlap):")
        print("\n".join(gaps))


def training_spread(rows: list[dict], others: Others) -> dict[str, dict[str, dict]]:
    """Per seed run with ``--train-seeds`` variants and per year, the range of F1 and of
    the predicted count over its temporal study and those variants (same world and shards,
    other training seeds).

    Returns:
        ``{seed: {year: {"f1": [min, max], "predicted_count": [min, max],
        "reference_count": n, "runs": n}}}`` (seeds as strings, in the order of ``rows``);
        empty without training-seed variants.
    """
    seeded = retrained(others)
    out: dict[str, dict[str, dict]] = {}
    for seed in dict.fromkeys(r["seed"] for r in rows if r["variant"] in seeded):
        runs = [r for r in rows if r["seed"] == seed and
                (r["variant"] == "temporal" or r["variant"] in seeded)]
        years: dict[str, dict] = {}
        for year in sorted({y for r in runs for y in r["held_out"]}):
            cells = [r["held_out"][year] for r in runs if year in r["held_out"]]
            f1 = [c["f1"] for c in cells if c.get("f1") is not None]
            n = [c["predicted_count"] for c in cells if c.get("predicted_count") is not None]
            years[year] = {"f1": [min(f1), max(f1)] if f1 else None,
                           "predicted_count": [min(n), max(n)] if n else None,
                           "reference_count": cells[0].get("reference_count"),
                           "runs": len(cells)}
        out[str(seed)] = years
    return out


def print_spread(rows: list[dict], others: Others) -> None:
    for seed, spread in training_spread(rows, others).items():
        runs = max(s["runs"] for s in spread.values())
        print(f"\nSeed {seed} over {runs} training seeds (same world and shards): "
              "held-out F1 min-max, predicted count min-max / reference")
        print(" ".join(f"{y}: {_fmt(s['f1'][0]).strip()}-{_fmt(s['f1'][1]).strip()} "
                       f"{s['predicted_count'][0]}-{s['predicted_count'][1]}/"
                       f"{s['reference_count']}"
                       for y, s in spread.items() if s["f1"] and s["predicted_count"]))


def print_recovery(rows: list[dict]) -> None:
    """Per seed and year: each recovery stage's share marked landslide, and where the
    misses and false alarms lie (their share on the stages next to rec 0.5)."""
    for r in rows:
        if r.get("recovery_error"):
            print(f"\nseed {r['seed']}: no recovery table: {r['recovery_error']}")
    rows = [r for r in rows if r.get("recovery")]
    if not rows:
        return
    print("\nHeld-out observed pixels by the recovery of the scar under them: share marked "
          "landslide, marked/pixels (fresh, young, older: inventoried, rec < 0.5); misses\n"
          "(inventoried, not marked) on older scars and false alarms (marked, not inventoried) "
          "on just dropped ones, as shares of all misses and false alarms")
    print(f"{'seed':>5} {'stack':12} {'year':>4}" + "".join(f" {n:>18}" for n in RECOVERY_NAMES)
          + f" {'misses older':>13} {'FA just dropped':>16}")
    for r in rows:
        for year, by_stage in r["recovery"].items():
            cells = []
            for name in RECOVERY_NAMES:
                s = by_stage[name]
                frac = "  n/a" if s["fraction"] is None else f"{s['fraction']:.3f}"
                cells.append(f" {frac} {s['landslide']}/{s['pixels']}".rjust(19))
            miss = {n: by_stage[n]["pixels"] - by_stage[n]["landslide"] for n in INVENTORIED}
            fa = {n: by_stage[n]["landslide"] for n in RECOVERY_NAMES if n not in INVENTORIED}
            print(f"{r['seed']:>5} {r['variant']:12} {year:>4}" + "".join(cells)
                  + f" {_share(miss['older'], sum(miss.values())):>13}"
                  + f" {_share(fa['just dropped'], sum(fa.values())):>16}")


def print_near_line(rows: list[dict]) -> None:
    """Per seed and year: the F1, the F1 with the scars closest to the line decided right,
    and the large scars near the line (failure year, recovery, in or out of the inventory,
    held-out pixels, share marked)."""
    rows = [r for r in rows if r.get("near_line")]
    if not rows:
        return
    lo, hi = NEAR_LINE
    print(f"\nScars near the half-regrown line (recovery {lo:.2f}-{hi:.2f}, at least "
          f"{NEAR_LINE_MIN_PIXELS} held-out observed pixels; in/out: inventoried or not),\n"
          f"largest first, and each year's F1 if every scar at {DECIDED_BAND[0]:.2f}-"
          f"{DECIDED_BAND[1]:.2f} were decided right: failure year, recovery, in/out, "
          "pixels, share marked")
    print(f"{'seed':>5} {'stack':12} {'year':>4} {'F1':>5} {'right':>5}  scars")
    for r in rows:
        for year, d in r["near_line"].items():
            scars = "; ".join(f"{c['failure_year']} {c['recovery']:.2f} "
                              f"{'in' if c['inventoried'] else 'out'} {c['pixels']} "
                              f"{c['marked'] / c['pixels']:.0%}" for c in d["scars"])
            print(f"{r['seed']:>5} {r['variant']:12} {year:>4} {_fmt(d['f1'])} "
                  f"{_fmt(d['f1_band_right'])}  {scars or '-'}")
    print(f"\nThose scars decided right (most of their pixels marked if inventoried, unmarked if "
          f"not), all years: recovery {DECIDED_BAND[0]:.2f}-{DECIDED_BAND[1]:.2f} | the rest "
          f"of {lo:.2f}-{hi:.2f}")
    for r in rows:
        band, rest = decided_right(r["near_line"])
        print(f"{r['seed']:>5} {r['variant']:12} {band[0]}/{band[1]} | {rest[0]}/{rest[1]}")


def decided_right(near_line: dict[str, dict]) -> tuple[tuple[int, int], tuple[int, int]]:
    """How many of a study's near-line scars (:func:`scar_decisions`) it decided right.

    A scar is decided right when more than half of its scored pixels are marked and it is
    inventoried, or at most half and it is not.

    Returns:
        ``((right, scars), (right, scars))``: the scars with recovery in
        :data:`DECIDED_BAND`, then the other scars of :data:`NEAR_LINE`, over all years.
    """
    counts = {True: [0, 0], False: [0, 0]}
    for year in near_line.values():
        for c in year["scars"]:
            tally = counts[DECIDED_BAND[0] <= c["recovery"] < DECIDED_BAND[1]]
            tally[0] += (2 * c["marked"] > c["pixels"]) == c["inventoried"]
            tally[1] += 1
    return (counts[True][0], counts[True][1]), (counts[False][0], counts[False][1])


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%} of {whole}" if whole else "n/a"


def variant_settings(stacks: list[str], stems: list[str], train_seeds: str,
                     widths: list[str] | None = None) -> Others:
    """The variants from ``--stack``, ``--stem``, ``--train-seeds`` and ``--base-filters``.

    Raises:
        ValueError: naming the flag: a missing ``=``, a name that is empty, longer than 12
            characters, built in or given twice, no references, widths or seeds that are
            not integers (seeds: >= 0), a training seed given twice, a filter count that is
            not a positive integer.
    """
    others: Others = {}
    for flag, texts in (("stack", stacks), ("stem", stems), ("base-filters", widths or [])):
        for text in texts:
            name, eq, value = text.partition("=")
            if not name or not eq or (flag != "stem" and not value) or len(name) > 12 \
                    or name in VARIANTS or name in others:
                what = {"stack": "REF;REF...", "stem": "WIDTHS"}.get(flag, "N")
                raise ValueError(f"--{flag} {text!r}: give NAME={what} with a new name of up "
                                 f"to 12 characters")
            if flag == "stack":
                others[name] = {"references": tuple(r.strip() for r in value.split(";")
                                                    if r.strip())}
            elif flag == "base-filters":
                if not value.strip().isdigit() or int(value) < 1:
                    raise ValueError(f"--base-filters {text!r}: N is a positive integer")
                others[name] = {"base_filters": int(value)}
            else:
                try:
                    others[name] = {"stem": tuple(int(w) for w in value.split(",") if w.strip())}
                except ValueError:
                    raise ValueError(f"--stem {text!r}: WIDTHS are comma-separated "
                                     f"integers") from None
    for text in (t.strip() for t in train_seeds.split(",") if t.strip()):
        name = f"train{int(text)}" if text.isdigit() else ""
        if not name or name in others:
            raise ValueError(f"--train-seeds {train_seeds!r}: give distinct integers >= 0, "
                             f"e.g. 1,2")
        others[name] = {"train_seed": int(text)}
    return others


def study_variants(seed: int, seeds: list[int], single: list[int], spread_seeds: list[int],
                   others: Others) -> list[str]:
    """The studies run for ``seed``, in order: the demo's (``temporal``), ``single-date``
    for the seeds in ``single``, the ``--stack``/``--stem``/``--base-filters`` variants for
    the first of ``seeds``, the ``--train-seeds`` ones for the seeds in ``spread_seeds``."""
    again = retrained(others)
    variants = [v for v in VARIANTS if v == "temporal" or seed in single]
    variants += [n for n in others if n not in again] if seed == seeds[0] else []
    return variants + (again if seed in spread_seeds else [])


def retrained(others: Others) -> list[str]:
    """The names of the ``--train-seeds`` variants among ``others``, in their order."""
    return [name for name, o in others.items() if "train_seed" in o]


def parse_seeds(text: str) -> list[int]:
    """The world seeds ``--seeds`` names (comma-separated integers >= 0, each once).

    Raises:
        ValueError: naming the flag and the value: an empty list, a seed that is not an
            integer >= 0, or one named twice (its studies would share one folder).
    """
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts) or len(set(map(int, parts))) < len(parts):
        raise ValueError(f"--seeds {text!r}: give comma-separated integers >= 0, each once "
                         "(e.g. 42,7,123)")
    return [int(t) for t in parts]


def seed_subset(text: str | None, seeds: list[int], flag: str) -> list[int]:
    """The seeds ``text`` names (comma-separated; None: the first of ``seeds``).

    Raises:
        ValueError: naming ``flag``: a seed that is not an integer or not in ``seeds``.
    """
    if text is None:
        return seeds[:1]
    out = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        if not part.lstrip("-").isdigit() or int(part) not in seeds:
            raise ValueError(f"{flag} {text!r}: give seeds of --seeds "
                             f"({','.join(map(str, seeds))})")
        out.append(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="42,7,123", help="World seeds (default 42,7,123).")
    p.add_argument("--out", default="bench-quality-out", help="Work folder.")
    p.add_argument("--json", default="bench-quality.json", help="Where to write the figures.")
    p.add_argument("--quick", action="store_true", help="The quick demo (smaller world).")
    p.add_argument("--single-date-seeds", default=None,
                   help="Seeds (of --seeds) also run with a single-date stack (default: the "
                        "first seed; '': none).")
    p.add_argument("--stack", action="append", default=[], metavar="NAME=REF;REF...",
                   help="Also run the first seed with other reference images, e.g. "
                        "'2refs=base=-4y..-1y:greenest;pre=2009-01-01/2012-12-31:greenest' "
                        "(NAME: up to 12 characters); repeatable.")
    p.add_argument("--stem", action="append", default=[], metavar="NAME=WIDTHS",
                   help="Also run the first seed with another U-Net stem (1x1 convolutions "
                        "before the first block), e.g. 'nostem=' (none) or 'w64x32=64,32' "
                        f"(the demo's: {','.join(map(str, DemoConfig().stem))}); repeatable.")
    p.add_argument("--base-filters", action="append", default=[], metavar="NAME=N",
                   help="Also run the first seed with a U-Net of N filters in its first block "
                        f"(the demo's: {DemoConfig().base_filters}), e.g. 'wide24=24'; "
                        "repeatable.")
    p.add_argument("--train-seeds", default="", metavar="N,N...",
                   help="Also run the demo of the --train-seeds-for seeds with these "
                        "training seeds (same world and shards; other initial weights, "
                        "shuffles and augmentation) and print the spread of each seed's "
                        "figures over them.")
    p.add_argument("--train-seeds-for", default=None, metavar="SEEDS",
                   help="The seeds (of --seeds) whose study --train-seeds repeats (default: "
                        "the first seed).")
    p.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                   help="Train every study's models with a moving average of the weights "
                        "of this momentum (e.g. 0.99; default 0: off, as the demo).")
    p.add_argument("--existing", action="store_true",
                   help="Only read the studies already finished in --out: run no stage, "
                        "even one a plain run would redo (stops if a study is unfinished).")
    p.add_argument("--study", help=argparse.SUPPRESS)  # one study, in a child process
    args = p.parse_args(argv)
    try:
        others = variant_settings(args.stack, args.stem, args.train_seeds,
                                  args.base_filters)
        DemoConfig(ema=args.ema)  # a momentum outside [0, 1) fails here, not in a study
    except (ValueError, ConfigError) as exc:
        p.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pipelines.demo").setLevel(logging.INFO)
    if args.study:
        return _study_child(args.study)
    try:
        seeds = parse_seeds(args.seeds)
        # a seed not in --seeds would run no study: refused, not skipped in silence
        single = seed_subset(args.single_date_seeds, seeds, "--single-date-seeds")
        spread_seeds = seed_subset(args.train_seeds_for, seeds, "--train-seeds-for")
    except ValueError as exc:
        p.error(str(exc))
    from model.cpu import describe_cpu

    machine = describe_cpu()
    rows = []
    for seed in seeds:
        base = os.path.join(args.out, f"seed{seed}")
        first = None
        for variant in study_variants(seed, seeds, single, spread_seeds, others):
            out = os.path.join(base, variant)
            if args.existing:
                rows.append(read_study(out, seed, variant, args.quick, others, args.ema))
            else:
                if first is not None:
                    share_world(first, out)
                rows.append(run_study_process(out, seed, variant, args.quick, others,
                                              args.ema))
            first = first or out
            fsio.write_json(args.json, {"machine": machine, "existing": args.existing,
                                        "world_fields": list(WORLD_FIELDS), "rows": rows,
                                        "training_spread": training_spread(rows, others)})
    # a seed's world, its figures and the times all depend on the CPU (see describe_cpu)
    print(("\nStudies read from --out, not run; this machine: " if args.existing
           else "\nMachine: ") + machine)
    print_table(rows)
    print_spread(rows, others)
    print_recovery(rows)
    print_near_line(rows)
    print(f"\nFigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
