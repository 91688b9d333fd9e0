"""``landslides demo``: a multi-temporal landslide study on the synthetic world, end to end.

It reproduces the design of the multi-temporal U-Net study (pre-, co- and post-earthquake
inventories, transfer learning) with nothing to download:

1. generate the world (2013-2019 and the years before that the input stack's reference
   images need; earthquake in 2015);
2. hold out blocks spread over the investigation area (never trained on, in any year);
3. export training patches of the training years from the training area, with temporal
   context (each year's image; the greenest clear view of the same place in the four
   years before it and in the four years before the study period, a pre-event
   baseline; the barest clear view of the four years before it, an older scar at its
   freshest; their differences), and train a U-Net;
4. fine-tune that artifact on the investigation area's other blocks (transfer learning)
   and evaluate both models on patches of the held-out blocks;
5. sweep the investigation area for every year;
6. compare the sweeps with the reference inventories on the held-out blocks, every year,
   and write the report (it names the areas and years seen in training).

Every stage records what it did in ``<out>/stages/<name>.json`` with a fingerprint of its
configuration; a re-run skips stages whose record matches, so an interrupted demo resumes
and a finished one returns at once. A stage about to run first deletes its record and the
later stages' (their outputs are about to change), and a stage whose product is incomplete
(a sweep with failed chunks, a partial comparison) raises :class:`StageIncompleteError` and
writes no record, so ``landslides demo`` exits 1 and a re-run retries it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines import fsio
from pipelines.errors import ConfigError, LandslideError
from pipelines.geo.stack import StackSpec, parse_references
from pipelines.options.compare import METRICS_VERSION
from pipelines.options.fields import option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        out: Output folder.
        quick: A smaller world and shorter training (used by the tests, < 3 minutes).
        seed: Seed of the world (and of training, unless ``train_seed`` is set).
        train_seed: Seed of training alone (initial weights, shuffles, augmentation);
            ``None``: ``seed``. Another one trains on the same world and shards, so the
            spread of the held-out figures over training seeds is measured apart from the
            world's.
        train_years: Years whose inventories train the models (the others are never seen).
        years: Years swept and compared.
        references: The input stack's reference images (``NAME=OFFSET`` or
            ``NAME=START/END``, see :mod:`pipelines.geo.stack`).
        change: Change bands of every reference.
        history_years: Years the world holds before the first swept year, for reference
            images (a stack that needs older images is refused).
        stem: Widths of the U-Net's 1x1 stem (:func:`model.unet.build_unet`), in the full
            demo; empty: none.
        base_filters: Filters of the U-Net's first block in the full demo (the quick demo
            keeps 8); each block below doubles them.
        ema: Momentum of a moving average of the weights that both trainings validate
            and keep (``TrainConfig.ema``), in the full demo; 0: off. Off by default:
            with 0.99 the held-out figures moved within their training-seed spread while
            training took ~15% longer, once past the demo's 8 minutes (README).
    """

    out: str = option("demo-out", "Output folder (default %(default)s).")
    quick: bool = option(False, "A smaller world and shorter training (a few minutes).")
    seed: int = option(42, "Seed of the world and training.")
    train_seed: int | None = option(None, "Seed of training alone: initial weights, shuffles "
                                    "and augmentation (default: --seed).")
    # two and three years after the 2015 event (2017, 2018) many scars pass the inventories'
    # "half regrown" line: training on both shows the model where a scar is dropped (with
    # 2014/2016/2018 only, seeds 7 and 123 gave 0.03 and 0.01 lower mean held-out F1 and
    # seed 123 counted 63% too many landslides in 2018; 2013, 2015 and 2019 stay unseen)
    train_years: tuple[int, ...] = (2014, 2016, 2017, 2018)
    years: tuple[int, ...] = tuple(range(2013, 2020))
    # the greenest of the four years before each image, and of the four years before the
    # first swept year (a pre-event baseline: scars of 2015 still differ from it in 2019),
    # and the barest of the four years before each image (an older scar at its freshest:
    # how far it has regrown since is what keeps it in an inventory or drops it)
    references: tuple[str, ...] = ("base=-4y..-1y:greenest",
                                   "pre=2009-01-01/2012-12-31:greenest",
                                   "bare=-4y..-1y:barest")
    change: tuple[str, ...] = ("NDVI", "B4", "B8", "B11", "B12")
    history_years: int = 4
    # one 1x1 convolution of 32 filters mixes each pixel's 41 channels before the first 3x3
    # block: a per-pixel network on the same inputs had found the older scars the U-Net
    # missed; with it seed 42's held-out F1 rose in every year (2018 0.70 -> 0.77); two
    # layers (64, 32) gave less (2018 0.72) and three (64, 64, 32) less still (0.68), single
    # runs: other training seeds alone move 2018 over 0.67-0.77 (README, bench/quality.py)
    stem: tuple[int, ...] = (32,)
    base_filters: int = 16
    ema: float = option(0.0, "Momentum of a moving average of the weights the models "
                        "validate and keep (e.g. 0.99; default 0: off).")

    def __post_init__(self) -> None:
        if self.train_seed is not None and (isinstance(self.train_seed, bool)
                                            or not isinstance(self.train_seed, int)
                                            or self.train_seed < 0):
            raise ConfigError(f"train_seed must be an integer >= 0, got {self.train_seed!r}.")
        if isinstance(self.ema, bool) or not isinstance(self.ema, int | float) \
                or not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be a number in [0, 1) (0: off), got {self.ema!r}.")
        if isinstance(self.base_filters, bool) or not isinstance(self.base_filters, int) \
                or self.base_filters < 1:
            raise ConfigError(f"base_filters must be a positive integer, got "
                              f"{self.base_filters!r}.")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.stem):
            raise ConfigError(f"stem must be positive integer widths, got {list(self.stem)}.")
        missing = [y for y in self.train_years if y not in self.years]
        if missing:
            raise ConfigError(f"train_years {missing} must be among the years {self.years}.")
        first = self.world_years[0]
        for y in self.years:
            for name, (start, _) in self.stack.windows(f"{y}-01-01", f"{y}-12-31").items():
                if int(start[:4]) < first:
                    raise ConfigError(
                        f"Reference {name!r} of {y} needs the image of {start[:4]}, before the "
                        f"world's first year {first}: raise history_years.")

    @property
    def training_seed(self) -> int:
        """The seed the models train with."""
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def stack(self) -> StackSpec:
        """The input stack every model of the demo takes."""
        return StackSpec(BANDS, parse_references(self.references), None, self.change)

    @property
    def world_years(self) -> tuple[int, ...]:
        """The years the world holds: the swept ones and ``history_years`` before."""
        return tuple(range(min(self.years) - self.history_years, max(self.years) + 1))

    @property
    def size_km(self) -> float:
        return 6.0 if self.quick else 12.0

    def path(self, *parts: str) -> str:
        return fsio.join(self.out, *parts)


class StageIncompleteError(LandslideError):
    """A demo stage whose product is incomplete (failed chunks, a partial comparison).

    It writes no record, so a re-run of the demo runs the stage again.
    """


@dataclass
class Stage:
    """One step of the demo: a name, what it depends on, and the function that runs it."""

    name: str
    run: Callable[[DemoConfig], dict]
    weight: float = 1.0  # rough relative duration, for the ETA
    fingerprint: dict = field(default_factory=dict)
    #: The configuration fields the stage depends on (``None``: all of them), so a study
    #: that changes only the model reuses the world.
    uses: tuple[str, ...] | None = None


#: Settings that are part of a stage's fingerprint only where they differ from their
#: defaults (added after demos had finished with those values).
UNFINGERPRINTED_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(DemoConfig)
    if f.name in ("train_seed", "ema", "base_filters")}


class StageRunner:
    """Runs stages in order, skipping those already done with the same fingerprint."""

    def __init__(self, config: DemoConfig, stages: list[Stage]) -> None:
        self.config = config
        self.stages = stages
        self.total_weight = sum(s.weight for s in stages)

    def record_path(self, stage: Stage) -> str:
        return self.config.path("stages", f"{stage.name}.json")

    def fingerprint(self, stage: Stage) -> str:
        cfg = dataclasses.asdict(self.config)
        cfg.pop("out")
        # fields added later are left out at their default (training with the world's
        # seed, no moving average: as before they existed), so finished stages stay done
        for name, default in UNFINGERPRINTED_DEFAULTS.items():
            if cfg.get(name) == default:
                cfg.pop(name, None)
        if stage.uses is not None:
            cfg = {k: cfg[k] for k in stage.uses}
        return fsio.digest({"stage": stage.name, "config": cfg, **stage.fingerprint})[:16]

    def is_done(self, stage: Stage) -> bool:
        rec = fsio.read_record(self.record_path(stage))
        return rec is not None and rec.get("fingerprint") == self.fingerprint(stage)

    def forget_from(self, index: int) -> None:
        """Delete the records of the stage at ``index`` and of every stage after it.

        Called before that stage runs: it rewrites its outputs, which the later stages
        read, so a run interrupted inside it must leave no record that still matches the
        configuration the outputs were made for.
        """
        for stage in self.stages[index:]:
            path = self.record_path(stage)
            if fsio.exists(path):
                fsio.delete(path)

    def run(self) -> dict[str, dict]:
        results: dict[str, dict] = {}
        started = time.monotonic()
        done_weight = 0.0
        upstream_ran = False  # once a stage re-runs, later stages depend on new outputs
        for i, stage in enumerate(self.stages, 1):
            head = f"[{i}/{len(self.stages)}] {stage.name}"
            if not upstream_ran and self.is_done(stage):
                results[stage.name] = fsio.read_json(self.record_path(stage))["result"]
                log.info("%s: already done, reusing %s", head, self.record_path(stage))
                done_weight += stage.weight
                continue
            log.info("%s ...", head)
            upstream_ran = True
            self.forget_from(i - 1)
            t0 = time.monotonic()
            result = stage.run(self.config)
            took = time.monotonic() - t0
            done_weight += stage.weight
            results[stage.name] = result
            fsio.write_json(self.record_path(stage), {
                "stage": stage.name, "fingerprint": self.fingerprint(stage),
                "seconds": round(took, 1), "result": result})
            elapsed = time.monotonic() - started
            rate = done_weight / elapsed if elapsed > 0 else 0
            eta = (self.total_weight - done_weight) / rate if rate > 0 else 0
            log.info("%s done in %.0f s (%.0f%% of the demo, ETA %.0f s)", head, took,
                     100 * done_weight / self.total_weight, eta)
        return results


# ----------------------------------------------------------------------------- stages
def stage_world(cfg: DemoConfig) -> dict:
    from pipelines.synth import WorldConfig, generate_world

    world = generate_world(cfg.path("world"), WorldConfig(seed=cfg.seed, size_km=cfg.size_km,
                                                          years=cfg.world_years))
    counts = {str(y): world["landslides"][str(y)]["visible"] for y in cfg.world_years} \
        if "landslides" in world else {}
    return {"world": cfg.path("world"), "years": list(cfg.world_years),
            "landslides_visible": counts}


def stage_terrain(cfg: DemoConfig) -> dict:
    from pipelines.geo.terrain import write_terrain

    paths = write_terrain(cfg.path("world", "dem.tif"), cfg.path("terrain"))
    return {"terrain": paths}


BANDS = ("B2", "B3", "B4", "B8", "B11", "B12", "DEM", "slope")
#: Side (m) of the blocks of the investigation area that are held out or fine-tuned on.
HOLDOUT_BLOCK_M = 1280.0
#: Share of the investigation area's blocks held out for evaluation.
HOLDOUT_SHARE = 0.45
#: Gap (m) between held-out blocks and the fine-tuning area (the quick demo's is half:
#: :func:`holdout_gap_m`). Patches cut at the fine-tuning area's edge extend beyond it (a
#: 64-px patch is 640 m), but export reads only inside the area it is given (pixels
#: outside are nodata and unlabelled), so no training pixel lies within the gap.
HOLDOUT_GAP_M = 320.0


def holdout_gap_m(cfg: DemoConfig) -> float:
    """The gap (m) between the held-out blocks and the fine-tuning area in this demo."""
    return HOLDOUT_GAP_M / (2.0 if cfg.quick else 1.0)


def _train_settings(cfg: DemoConfig) -> dict[str, Any]:
    # BCE + Dice keeps probabilities calibrated (Tversky's recall bias pushed the calibrated
    # threshold to ~0.999 on this world); settings sized for a 2-core machine.
    # The validation split is a few blocks: its F1 jumps between epochs, so stopping and the
    # kept epoch follow the validation loss (following F1 kept an epoch-7 peak of a run that
    # was still learning).
    if cfg.quick:
        return {"base_filters": 8, "depth": 3, "epochs": 4, "patience": 0, "batch_size": 16,
                "loss": "bce_dice", "monitor": "val_loss"}
    # 26 + 10 epochs keep the demo under 8 minutes with three references on the 2-core
    # development machine (bench/quality.py prints the study time, README's timing table
    # keeps it); it became affordable once the datasets stopped stalling every other
    # epoch (model.data.epoch_options), and raised every held-out year's F1 of seed 42
    settings: dict[str, Any] = {
        "base_filters": cfg.base_filters, "depth": 4, "epochs": 26, "patience": 8, "batch_size": 16,
        "loss": "bce_dice", "reduce_lr_patience": 3, "monitor": "val_loss", "stem": cfg.stem}
    if cfg.ema:  # unset, it is left out: demos trained before it existed stay done
        settings["ema"] = cfg.ema
    return settings


def _finetune_settings(cfg: DemoConfig) -> dict[str, Any]:
    """Fine-tuning starts from the base model (lr 1e-4 by default with init_from)."""
    if cfg.quick:
        return {"epochs": 3}
    return {"epochs": 10, "patience": 4, "lr": 5e-4}


def _chunk(cfg: DemoConfig) -> int:
    # the quick world's areas need small chunks to hold a spatially blocked validation split
    return 64 if cfg.quick else 128


def _stride(cfg: DemoConfig) -> int:
    return 32


def stage_areas(cfg: DemoConfig) -> dict:
    """Hold out blocks of the investigation area for evaluation; fine-tune on the others.

    The investigation area is cut into square blocks; a seeded share of them is held out
    (never trained on, in any year), the rest is where the model is fine-tuned. A gap
    (:func:`holdout_gap_m`) separates the two: patches cut at the fine-tuning area's edge
    reach into it (and beyond), but export reads only inside the area it is given, so no
    training pixel with data or a label lies in or near a held-out block. Held-out
    blocks spread over the whole area, so they hold its look-alikes (river, gravel, roads).
    """
    import geopandas as gpd
    import numpy as np
    import shapely
    from shapely.geometry import box

    from pipelines.geo.grid import load_region

    study = load_region(cfg.path("world", "study_area.geojson")).geometry
    world = fsio.read_json(cfg.path("world", "world.json"))
    crs = world["crs"]
    geom = gpd.GeoSeries([study], crs="EPSG:4326").to_crs(crs).iloc[0]
    minx, miny, maxx, maxy = geom.bounds
    side = HOLDOUT_BLOCK_M / (2.0 if cfg.quick else 1.0)
    nx, ny = int(np.ceil((maxx - minx) / side)), int(np.ceil((maxy - miny) / side))
    cells = [(i, j) for j in range(ny) for i in range(nx)]
    order = np.random.default_rng(cfg.seed).permutation(len(cells))
    held = {cells[k] for k in order[:max(1, round(HOLDOUT_SHARE * len(cells)))]}
    blocks = {c: box(minx + c[0] * side, miny + c[1] * side, minx + (c[0] + 1) * side,
                     miny + (c[1] + 1) * side) for c in cells}
    gap = holdout_gap_m(cfg)
    held_geom = shapely.union_all([blocks[c] for c in held]).intersection(geom)
    eval_area = held_geom.buffer(-gap / 2.0, join_style="mitre")
    tune = shapely.union_all([blocks[c] for c in cells if c not in held]).intersection(geom)
    tune = tune.difference(held_geom.buffer(gap / 2.0, join_style="mitre"))
    train_area = gpd.read_file(cfg.path("world", "train_area.geojson")).to_crs(crs).union_all()
    # what the fine-tuned model learns from: the training area and the area's other blocks
    region = shapely.union_all([train_area, tune])
    out = {}
    for name, g in (("finetune_area", tune), ("eval_area", eval_area),
                    ("finetune_region", region)):
        path = cfg.path("areas", f"{name}.geojson")
        frame = gpd.GeoDataFrame({"name": [name]}, geometry=[g], crs=crs).to_crs("EPSG:4326")
        fsio.write_bytes(path, frame.to_json().encode())
        out[name] = path
        out[f"{name}_km2"] = round(g.area / 1e6, 2)
    return out


def _areas(cfg: DemoConfig) -> dict:
    return fsio.read_json(cfg.path("stages", "areas.json"))["result"]


def _export(cfg: DemoConfig, aoi: str, out: str, years: tuple[int, ...],
            fractions: tuple[float, float, float], negative_fraction: float,
            stride: int | None) -> dict:
    from pipelines.export import ExportConfig, run_export
    from pipelines.geo.patches import PatchRules, SplitPlan

    y = years[0]
    manifest = run_export(ExportConfig(
        source={"kind": "synthetic", "world": cfg.path("world")}, aoi=aoi, out=out,
        inventory=cfg.path("world", "inventory_{year}.gpkg"), start=f"{y}-01-01",
        end=f"{y}-12-31", years=years, stack=cfg.stack, chunk_size=_chunk(cfg),
        patch=PatchRules(64, stride=stride, negative_fraction=negative_fraction,
                         max_nodata_fraction=0.5, seed=cfg.seed),
        split=SplitPlan(fractions, block=2, seed=cfg.seed), compression="none"))
    return {"shards": out, "years": list(years), "patches": manifest["patches"],
            "positive_patches": manifest["positive_patches"]}


def stage_export_train(cfg: DemoConfig) -> dict:
    return _export(cfg, cfg.path("world", "train_area.geojson"), cfg.path("shards", "train"),
                   cfg.train_years, (0.8, 0.2, 0.0), 1.0, _stride(cfg))


def stage_train(cfg: DemoConfig) -> dict:
    from model.train import TrainConfig, train

    meta = train(cfg.path("shards", "train"), cfg.path("models", "base"),
                 TrainConfig(seed=cfg.training_seed, **_train_settings(cfg)))
    return {"model": cfg.path("models", "base"), "model_id": meta["model_id"],
            "val_metrics": meta.get("metrics", {})}


def stage_export_finetune(cfg: DemoConfig) -> dict:
    areas = _areas(cfg)
    # the investigation area's own blocks with the training area, so fine-tuning adds the
    # area's look-alikes without forgetting what the base model learnt
    tune = _export(cfg, areas["finetune_region"], cfg.path("shards", "finetune"),
                   cfg.train_years, (0.8, 0.2, 0.0), 1.0, _stride(cfg))
    held = _export(cfg, areas["eval_area"], cfg.path("shards", "eval"), cfg.years,
                   (0.0, 0.0, 1.0), 1.0, None)
    return {"finetune": tune, "eval": held}


def stage_finetune(cfg: DemoConfig) -> dict:
    from model.train import TrainConfig, train

    settings = _train_settings(cfg)
    settings.update(_finetune_settings(cfg))
    meta = train(cfg.path("shards", "finetune"), cfg.path("models", "finetuned"),
                 TrainConfig(seed=cfg.training_seed, init_from=cfg.path("models", "base"),
                             **settings))
    return {"model": cfg.path("models", "finetuned"), "model_id": meta["model_id"]}


def stage_evaluate(cfg: DemoConfig) -> dict:
    from model.train import evaluate

    out = {}
    for name in ("base", "finetuned"):
        res = evaluate(cfg.path("models", name), cfg.path("shards", "eval"), split="test",
                       out=cfg.path("evaluation", f"{name}.json"))
        out[name] = {k: res[k] for k in ("precision", "recall", "f1", "iou") if k in res}
    return out


def stage_sweep(cfg: DemoConfig) -> dict:
    """Sweep the investigation area for every year.

    Raises:
        StageIncompleteError: a year's sweep is not complete (status neither ``ok`` nor
            ``no_data``, e.g. failed chunks); every year is swept first.
    """
    from pipelines.predict import PredictConfig, run_predict

    out = {}
    incomplete = []
    for y in cfg.years:
        folder = cfg.path("sweeps", str(y))
        runs = run_predict(PredictConfig(
            model=cfg.path("models", "finetuned"),
            source={"kind": "synthetic", "world": cfg.path("world")},
            out=folder, aoi=cfg.path("world", "study_area.geojson"),
            start=f"{y}-01-01", end=f"{y}-12-31", chunk_size=256))
        statuses = [r.get("status") for r in runs]
        if not runs or any(st not in ("ok", "no_data") for st in statuses):
            failed = sum((r.get("counts") or {}).get("chunks_failed") or 0 for r in runs)
            incomplete.append(f"{y} (status {', '.join(map(str, statuses)) or 'none'}, "
                              f"{failed} failed chunk(s); see {folder})")
        counts = runs[0].get("counts", {}) if runs else {}
        out[str(y)] = {"polygons": counts.get("polygons"),
                       "chunks": counts.get("chunks_total"),
                       "landslide_km2": round(counts.get("landslide_px", 0) * 1e-4, 4)}
    if incomplete:
        raise StageIncompleteError(
            f"the sweeps of {len(incomplete)} year(s) are incomplete: "
            f"{'; '.join(incomplete)}. Run the demo again to retry their failed chunks "
            f"(the others are kept).")
    return out


def stage_compare(cfg: DemoConfig) -> dict:
    """Compare the sweeps with the reference inventories on the held-out blocks only.

    The predicted side is each sweep's mask mosaic, so pixels without clear imagery on
    every date of the input stack are not scored and reference landslides mostly under
    them are not counted (``observed_only``).

    Raises:
        StageIncompleteError: the comparison is not complete (status ``partial`` or
            ``failed``: an inventory or a sweep's mosaic could not be read).
    """
    from pipelines.compare import CompareConfig, incomplete_reasons, run_compare

    metrics = run_compare(CompareConfig(
        reference=cfg.path("world", "inventory_{year}.gpkg"),
        predicted=cfg.path("sweeps", "{year}", "mosaic", "mask.tif"),
        aoi=_areas(cfg)["eval_area"], years=cfg.years,
        out=cfg.path("report"), resolution=10.0, min_area=200.0,
        background=cfg.path("terrain", "hillshade.tif"), notes=training_notes(cfg)))
    if metrics.get("status") != "ok":
        problems = "; ".join(incomplete_reasons(metrics)) or "see the report"
        raise StageIncompleteError(
            f"the comparison is incomplete (status {metrics.get('status')!r}): {problems}. "
            f"The report is in {cfg.path('report')}; fix what it names and run the demo "
            f"again.")
    return {"report": cfg.path("report", "report.html"), "status": metrics.get("status"),
            "held_out": held_out_summary(metrics)}


def training_notes(cfg: DemoConfig) -> tuple[str, ...]:
    """What the report says about the models' training data."""
    areas = _areas(cfg)
    unseen = [y for y in cfg.years if y not in cfg.train_years]
    return (
        f"Scored on held-out blocks of the investigation area only ({areas['eval_area']}, "
        f"{areas['eval_area_km2']} km2): no model was trained on them in any year, and a "
        f"{holdout_gap_m(cfg):.0f} m gap separates them from every training pixel.",
        f"Training areas: the training area ({cfg.path('world', 'train_area.geojson')}) for "
        f"the base model; fine-tuning adds the investigation area's other blocks "
        f"({areas['finetune_area']}, {areas['finetune_area_km2']} km2).",
        f"Training years (inventories seen): {', '.join(map(str, cfg.train_years))}; years "
        f"never trained on: {', '.join(map(str, unseen)) or 'none'}.",
        f"Model input stack: {cfg.stack.describe()}.",
    )


def held_out_summary(metrics: dict) -> dict[str, dict]:
    """Per year: pixel precision/recall/F1 and predicted vs reference counts."""
    rows = {str(r.get("year")): r for r in (metrics.get("multitemporal") or {}).get("rows", [])}
    out = {}
    for year, entry in (metrics.get("years") or {}).items():
        px = entry.get("pixel") or {}
        row = rows.get(year, {})
        out[year] = {"precision": px.get("precision"), "recall": px.get("recall"),
                     "f1": px.get("f1"), "reference_count": row.get("reference_count"),
                     "predicted_count": row.get("predicted_count")}
    return out


#: What the world, its terrain and the held-out areas depend on.
WORLD_FIELDS = ("quick", "seed", "years", "history_years")


def stages(cfg: DemoConfig) -> list[Stage]:
    """The demo's stages, in order."""
    return [
        Stage("world", stage_world, weight=1.0, uses=WORLD_FIELDS),
        Stage("terrain", stage_terrain, weight=0.1, uses=WORLD_FIELDS),
        Stage("areas", stage_areas, weight=0.05, uses=WORLD_FIELDS),
        Stage("export_train", stage_export_train, weight=1.0),
        # settings live in code, not in the config: a changed schedule must retrain
        Stage("train", stage_train, weight=6.0,
              fingerprint={"bands": BANDS, "settings": _train_settings(cfg)}),
        Stage("export_finetune", stage_export_finetune, weight=1.0),
        Stage("finetune", stage_finetune, weight=3.0,
              fingerprint={"settings": _finetune_settings(cfg)}),
        Stage("evaluate", stage_evaluate, weight=0.5),
        Stage("sweep", stage_sweep, weight=4.0),
        Stage("compare", stage_compare, weight=1.0,
              fingerprint={"metrics_version": METRICS_VERSION}),
    ]


def share_world(src: str, dst: str) -> None:
    """Let the study in ``dst`` reuse the world, terrain and areas of the study in ``src``.

    Their stage records depend only on :data:`WORLD_FIELDS`, so a study with the same seed
    and years but another model or stack reuses them (local folders; links, not copies).
    """
    import os
    import shutil

    os.makedirs(os.path.join(dst, "stages"), exist_ok=True)
    for name in ("world", "terrain", "areas"):
        link = os.path.join(dst, name)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(src, name)), link)
        record = os.path.join(src, "stages", f"{name}.json")
        if os.path.exists(record):
            shutil.copyfile(record, os.path.join(dst, "stages", f"{name}.json"))


def run_demo(config: DemoConfig) -> dict[str, dict]:
    """Run (or resume) the demo; returns each stage's result."""
    fsio.makedirs(config.out)
    results = StageRunner(config, stages(config)).run()
    return results


def summary_lines(out: str, results: dict[str, dict]) -> list[str]:
    """What a person wants to read when the demo ends."""
    lines = [f"Demo finished; everything is in {out}"]
    ev = results.get("evaluate", {})
    for name in ("base", "finetuned"):
        if name in ev:
            m = ev[name]
            lines.append(f"  {name:9s} model on patches of the held-out blocks, all years: "
                         f"precision {m.get('precision', 0):.2f}, recall {m.get('recall', 0):.2f}, "
                         f"F1 {m.get('f1', 0):.2f}, IoU {m.get('iou', 0):.2f}")
    held = results.get("compare", {}).get("held_out") or {}
    if held:
        lines.append("  sweeps on the held-out blocks (observed pixels; counts of landslides):")
    for year, m in held.items():
        def num(v: Any) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        lines.append(f"    {year}: precision {num(m.get('precision'))}, recall "
                     f"{num(m.get('recall'))}, F1 {num(m.get('f1'))}; predicted "
                     f"{m.get('predicted_count')} vs reference {m.get('reference_count')}")
    report = results.get("compare", {}).get("report")
    if report:
        lines.append(f"Open the report: {report}")
    return lines


def demo_command(config: DemoConfig) -> int:
    """``landslides demo``: run the study and say where the outputs are.

    Returns:
        0 when every stage is complete; 1 when a stage's product is incomplete (it is
        not recorded as done, so running the demo again retries it).
    """
    try:
        results = run_demo(config)
    except StageIncompleteError as exc:
        log.error("Demo incomplete: %s", exc)
        return 1
    log.info("\n".join(summary_lines(config.out, results)))
    return 0
