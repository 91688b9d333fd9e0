"""The ``landslides`` console entry point: argument parsing only.

Each subcommand parses its arguments here and calls one importable function with the
same parameters. Only the chosen command's module is imported, so ``landslides synth``
does not pay for TensorFlow. Beam stages accept Beam pipeline options after their own
(``--runner DataflowRunner --project ...``); other commands reject unknown arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from model.errors import ModelError
from pipelines import __version__
from pipelines.errors import LandslideError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, list[str]], int | None]


def _call(target: str, **fixed: object) -> Handler:
    """A handler that imports ``module:function`` late and calls it with parsed args."""

    def handler(args: argparse.Namespace, extra: list[str]) -> int | None:
        modname, fname = target.split(":")
        fn = getattr(importlib.import_module(modname), fname)
        kwargs = {k: v for k, v in vars(args).items()
                  if k not in {"command", "handler", "verbose", "quiet", "accepts_extra"}}
        if "source" in kwargs and "world" in kwargs:  # source arguments travel together
            kwargs = _group_source_args(kwargs)
        kwargs.update(fixed)
        if getattr(args, "accepts_extra", False):
            kwargs["beam_args"] = extra
        result = fn(**kwargs)
        return result if isinstance(result, int) else 0

    return handler


_SOURCE_KEYS = ("world", "keep_clouds", "images", "dem", "dem_nodata", "band_map", "scale",
                "nodata", "mask_zero", "ee_project", "ee_dem", "ee_cloud_mask",
                "ee_high_volume", "ee_endpoint", "ee_max_concurrency", "ee_token_env")


def _group_source_args(kwargs: dict) -> dict:
    """Keep the source arguments as keyword arguments (the callee passes them on)."""
    return {k: v for k, v in kwargs.items() if k not in _SOURCE_KEYS or v not in (None, False)}


# ----------------------------------------------------------------------------- commands
def _synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="Output folder (local or gs://).")
    p.add_argument("--seed", type=int, default=42, help="Random seed (default 42).")
    p.add_argument("--size-km", type=float, default=12.0,
                   help="Side of the square world in km (default 12).")
    p.add_argument("--pixel-size", type=float, default=10.0, help="Metres (default 10).")
    p.add_argument("--years", default="2013-2019", help="Year range, e.g. 2013-2019.")
    p.add_argument("--event-year", type=int, default=2015,
                   help="Year of the earthquake that triggers many landslides (default 2015).")
    p.add_argument("--clouds", action=argparse.BooleanOptionalAction, default=True,
                   help="Add clouds and cloud shadows (default on).")
    p.set_defaults(handler=_call("pipelines.synth:generate_world_cli"))


def _terrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("dem", help="DEM raster (GeoTIFF/COG, local or gs://).")
    p.add_argument("--out", required=True, help="Output folder for the terrain COGs.")
    p.add_argument("--products", default="slope,aspect,curvature,hillshade",
                   help="Comma-separated products (default: all four).")
    p.add_argument("--z-factor", type=float, default=1.0,
                   help="Vertical exaggeration / unit conversion of elevations (default 1).")
    p.add_argument("--nodata", type=float, default=None,
                   help="Treat this DEM value as nodata (overrides the file's nodata).")
    p.set_defaults(handler=_call("pipelines.geo.terrain:write_terrain_cli"))


def _source_args(p: argparse.ArgumentParser) -> None:
    """Arguments that choose and configure an imagery source (export, predict, scan)."""
    g = p.add_argument_group("imagery source")
    g.add_argument("--source", choices=["synthetic", "geotiff", "earthengine"],
                   default="synthetic", help="Imagery source (default synthetic).")
    g.add_argument("--world", help="Synthetic world folder (from `landslides synth`).")
    g.add_argument("--keep-clouds", action="store_true",
                   help="Synthetic source: keep cloudy pixels as imagery (default: nodata).")
    g.add_argument("--images", action="append",
                   help="GeoTIFF/COG paths or globs (repeatable; {year} is filled from --start).")
    g.add_argument("--reference-images", action="append", metavar="NAME=PATH[;PATH]",
                   help="geotiff source: the images of a reference date of the input stack "
                        "(default: --images with {year} filled with the reference's year).")
    g.add_argument("--dem", help="DEM raster for the terrain bands (geotiff source).")
    g.add_argument("--dem-nodata", type=float, help="Treat this DEM value as nodata.")
    g.add_argument("--band-map", help="Band name to file band, e.g. B4=1,B3=2,B2=3,B8=4.")
    g.add_argument("--scale", help="Multiplier to physical units (auto: integer S2 DNs x 1e-4).")
    g.add_argument("--nodata", type=float, help="Image nodata value (overrides the files').")
    g.add_argument("--mask-zero", action="store_true",
                   help="Treat pixels that are 0 in every band as nodata.")
    g.add_argument("--ee-project", help="Earth Engine cloud project.")
    g.add_argument("--ee-dem", choices=["glo30", "aw3d30", "srtm", "3dep10"],
                   help="Earth Engine DEM (default glo30).")
    g.add_argument("--ee-cloud-mask", choices=["scl", "cloud_prob", "none"],
                   help="Sentinel-2 cloud masking (default scl).")
    g.add_argument("--ee-high-volume", action="store_true",
                   help="Use Earth Engine's high-volume endpoint.")
    g.add_argument("--ee-endpoint", help="Earth Engine API base URL (tests, private endpoints).")
    g.add_argument("--ee-max-concurrency", type=int,
                   help="Concurrent Earth Engine requests per worker (default 8).")
    g.add_argument("--ee-token-env", metavar="VAR",
                   help="Read an Earth Engine access token from environment variable VAR.")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="Output folder for shards (local or gs://).")
    p.add_argument("--aoi", required=True,
                   help="Area of interest: vector file or minlon,minlat,maxlon,maxlat.")
    p.add_argument("--inventory", help="Landslide polygons (any vector format; {year} with "
                                       "--years).")
    p.add_argument("--labels", help="A label raster instead of --inventory (integer classes, "
                                    "e.g. sparse labels; {year} with --years).")
    p.add_argument("--label-map", help="Label raster values to classes (default "
                                       "0=ignore,1=background,2=landslide); ignored pixels "
                                       "are never scored.")
    p.add_argument("--start", help="Date window start, YYYY-MM-DD.")
    p.add_argument("--end", help="Date window end, YYYY-MM-DD.")
    p.add_argument("--bands", help="Comma-separated bands (default B2,B3,B4,B8,B11,B12,DEM,slope).")
    g = p.add_argument_group("input stack (temporal context; recorded in the manifest and "
                             "the model, which predict then reads the same way)")
    g.add_argument("--reference", action="append", metavar="NAME=OFFSET|NAME=START/END",
                   help="A reference image of the same place: an offset from the target "
                        "window (prev=-1y) or a fixed window (pre=2014-01-01/2014-12-31); "
                        "repeatable. Its optical bands become channels B4@NAME ...")
    g.add_argument("--change", help="Change bands per reference: indices and bands, e.g. "
                                    "NDVI,B4,B11 -> dNDVI@NAME, dB4@NAME, dB11@NAME.")
    g.add_argument("--reference-bands",
                   help="Optical bands taken from each reference (default: the target's).")
    p.add_argument("--years", help="Export several labelled years in one run (2014,2016 or "
                                   "2014-2016): each replaces the year of --start/--end and "
                                   "fills {year} in --inventory.")
    p.add_argument("--pixel-size", type=float, default=10.0, help="Metres (default 10).")
    p.add_argument("--chunk-size", type=int, default=512, help="Chunk side in pixels (512).")
    p.add_argument("--patch-size", type=int, default=128, help="Patch side: 64, 128 or 256.")
    p.add_argument("--stride", type=int, help="Step between patches (default: patch size).")
    p.add_argument("--negative-fraction", type=float, default=0.25,
                   help="Fraction of landslide-free patches kept (0 drops them; default 0.25).")
    p.add_argument("--max-nodata", type=float, default=0.1,
                   help="Drop patches with more invalid pixels than this fraction (0.1).")
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions.")
    p.add_argument("--split-block", type=int, default=2,
                   help="Spatial split block side in chunks (default 2).")
    p.add_argument("--split-polygons", help="Explicit split areas: val=a.geojson,test=b.geojson.")
    p.add_argument("--split-buffer", type=int, default=0,
                   help="Pixels cut along chunk edges shared with another split, so splits are "
                        "2 x this apart and no patch leaks across (default 0).")
    p.add_argument("--seed", type=int, default=0, help="Seed for splits and selection.")
    p.add_argument("--class-attribute", help="Inventory attribute with class values.")
    p.add_argument("--classes", help="Class strings to ids, e.g. scarp=1,deposit=2.")
    p.add_argument("--num-shards", type=int, default=0, help="Shards per split (0: auto).")
    p.add_argument("--epsg", type=int, help="Use one projected CRS instead of UTM zones.")
    p.add_argument("--compression", choices=["gzip", "none"], default="gzip",
                   help="Shard compression (gzip: ISA-L level 2, ~half the bytes; none).")
    _source_args(p)
    p.set_defaults(handler=_call("pipelines.export:export_cli"), accepts_extra=True)


def _import_l4s(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="Folder with img/image_N.h5 (+ mask/).")
    p.add_argument("--out", required=True, help="Output folder for shards (local or gs://).")
    p.add_argument("--bands", help="Comma-separated subset of the 14 L4S bands (default all).")
    p.add_argument("--split", default="0.8,0.2,0.0", help="train,val,test fractions.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the per-patch split.")
    p.add_argument("--num-shards", type=int, default=0, help="Shards per split (0: auto).")
    p.set_defaults(handler=_call("pipelines.sources.landslide4sense:import_l4s_cli"),
                   accepts_extra=True)


def _compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True,
                   help="Reference inventory: vector file, mask COG/VRT or glob of chunk COGs; "
                        "may hold {year}.")
    p.add_argument("--predicted",
                   help="Predicted inventory (same forms); omit for statistics only.")
    p.add_argument("--aoi", help="Area of interest: vector file or minlon,minlat,maxlon,maxlat "
                                 "(default: the union of the inputs' extents).")
    p.add_argument("--years", help="Years filling {year}: 2013-2019, 2013,2015 or both.")
    p.add_argument("--out", required=True, help="Output folder for the report (local or gs://).")
    p.add_argument("--resolution", type=float, default=5.0,
                   help="Pixel size in metres of the common grid (default 5).")
    p.add_argument("--min-overlap", type=float, default=0.1,
                   help="Object match threshold in (0, 1] (default 0.1).")
    p.add_argument("--match", choices=["overlap", "iou"], default="overlap",
                   help="Object match criterion (default overlap).")
    p.add_argument("--min-area", type=float, default=0.0,
                   help="Ignore polygons smaller than this many m2 (default 0).")
    p.add_argument("--background", help="Raster under the overlay maps (hillshade or RGB COG).")
    p.add_argument("--epsg", type=int, help="Projected CRS to compare in (default: from inputs).")
    p.add_argument("--tile-size", type=int, default=2048,
                   help="Tile side in pixels of the streaming pixel metrics (default 2048).")
    p.add_argument("--connectivity", type=int, choices=[4, 8], default=4,
                   help="Pixel connectivity when vectorising raster inputs (default 4).")
    p.add_argument("--bins-per-decade", type=int, default=10,
                   help="Log bins per decade of the frequency-area distributions (10).")
    p.add_argument("--a-min", type=float,
                   help="Lower bound (m2) of the power-law tail fit (default: the rollover).")
    p.add_argument("--kde-bandwidth", type=float,
                   help="Kernel width in metres of the density maps (default: extent / 25).")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="Draw the PNG figures (default on; --no-figures for tables only).")
    p.add_argument("--observed-only", action=argparse.BooleanOptionalAction, default=True,
                   help="With a raster prediction (a sweep's mask mosaic), match and count only "
                        "reference landslides at least half inside its valid pixels (default "
                        "on: a landslide under clouds in every image is not a miss).")
    p.set_defaults(handler=_call("pipelines.compare:compare_cli"))


def _train_options(p: argparse.ArgumentParser) -> None:
    """Training settings shared by train and tune; unset flags keep the YAML's values."""
    g = p.add_argument_group("training settings (override --config)")
    g.add_argument("--bands", help="Comma-separated input bands (default: the manifest's).")
    g.add_argument("--depth", type=int, help="U-Net encoder blocks (default 5).")
    g.add_argument("--dropout", type=float, help="Dropout rate (default 0.1).")
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="Batch normalisation (default on).")
    g.add_argument("--bn-momentum", type=float, help="Batch-norm momentum (default 0.9).")
    g.add_argument("--n-classes", type=int,
                   help="1: binary sigmoid; K: softmax classes (default: from the manifest).")
    g.add_argument("--loss", choices=["tversky", "focal_tversky", "dice", "bce", "bce_dice"],
                   help="Loss (default tversky).")
    g.add_argument("--alpha", type=float, help="Tversky false-positive weight (0.3).")
    g.add_argument("--beta", type=float, help="Tversky false-negative weight (0.7).")
    g.add_argument("--gamma", type=float, help="Focal Tversky exponent (0.75).")
    g.add_argument("--epochs", type=int, help="Maximum epochs (default 50).")
    g.add_argument("--steps-per-epoch", type=int, help="Batches per epoch (default: all).")
    g.add_argument("--patience", type=int, help="Early-stopping patience (10; 0: off).")
    g.add_argument("--augment",
                   help="none, or e.g. flip_h,flip_v,rot90,rot45,shear=0.2,blur=0.3,sharpen=0.3.")
    g.add_argument("--seed", type=int, help="Seed (default 0).")
    g.add_argument("--init-from", help="Start from this model artifact (fine-tuning).")
    g.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="Keep the encoder of --init-from fixed.")
    g.add_argument("--mixed-precision",
                   choices=["auto", "off", "float32", "mixed_float16", "mixed_bfloat16"],
                   help="auto: mixed precision on GPU/TPU only (default).")
    g.add_argument("--strategy", choices=["auto", "default", "mirrored", "tpu", "multiworker"],
                   help="tf.distribute strategy (auto: from the devices and TF_CONFIG).")
    g.add_argument("--tpu", help="TPU name or address (implies --strategy tpu).")
    g.add_argument("--cache", choices=["auto", "memory", "none"],
                   help="Cache parsed patches in memory (auto: when under 1 GiB).")
    g.add_argument("--label", help="Label band of Earth Engine TFRecord exports.")
    g.add_argument("--saved-model", action=argparse.BooleanOptionalAction, default=None,
                   help="Also export a SavedModel into the artifact (default on).")
    g.add_argument("--allow-partial", action=argparse.BooleanOptionalAction, default=None,
                   help="Train on an export some of whose chunks failed (refused by default).")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="Same shards, config and seed give the same model (default on; "
                        "--no-deterministic lets tf.data reorder for speed).")


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="Export folder (manifest.json + train/val/) or glob of TFRecord shards.")
    p.add_argument("--out", required=True, help="Model artifact folder (local or gs://).")
    p.add_argument("--config", help="YAML file of training settings (flags override it).")
    p.add_argument("--val-data", help="Validation shards (default: the val split of --data).")
    p.add_argument("--base-filters", type=int, help="Filters of the first block (16).")
    p.add_argument("--lr", type=float, help="Adam learning rate (1e-3; 1e-4 with --init-from).")
    p.add_argument("--batch-size", type=int, help="Global batch size (default 32).")
    _train_options(p)
    p.set_defaults(handler=_call("model.cli:train_cli"))


def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Model artifact folder.")
    p.add_argument("--data", required=True,
                   help="Export folder (scored: --split) or glob of shards (all scored).")
    p.add_argument("--split", default="test", help="Split of an export folder (test).")
    p.add_argument("--out", help="evaluation.json path or folder (default: the artifact).")
    p.add_argument("--threshold", type=float,
                   help="Decision threshold (default: the artifact's calibrated one).")
    p.add_argument("--batch-size", type=int, default=16, help="Patches per batch (16).")
    p.add_argument("--label", help="Label band of Earth Engine TFRecord exports.")
    p.add_argument("--allow-partial", action="store_true",
                   help="Score an export some of whose chunks failed (refused by default).")
    p.set_defaults(handler=_call("model.cli:evaluate_cli"))


def _tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="Export folder (manifest.json + train/val/) or glob of TFRecord shards.")
    p.add_argument("--out", required=True,
                   help="Folder for trials/, tuning.csv (sorted by val F1) and best/.")
    p.add_argument("--config", help="YAML settings; its `tune:` mapping may hold the grid.")
    p.add_argument("--val-data", help="Validation shards (default: the val split of --data).")
    p.add_argument("--lr", help="Learning rates, e.g. 1e-3,1e-4.")
    p.add_argument("--filters", help="Base filters, e.g. 8,16,32.")
    p.add_argument("--batch-size", help="Batch sizes, e.g. 16,32.")
    _train_options(p)
    p.set_defaults(handler=_call("model.cli:tune_cli"))


def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Model artifact folder (local or gs://).")
    p.add_argument("--out", required=True, help="Output folder (local or gs://).")
    g = p.add_argument_group("area of interest (exactly one)")
    g.add_argument("--aoi", help="Vector file or minlon,minlat,maxlon,maxlat.")
    g.add_argument("--point", help="LAT,LON: map a square around a place (see --buffer-m).")
    g.add_argument("--events", help="CSV event catalogue (e.g. NASA GLC: event_id, event_date, "
                                    "latitude, longitude): one AOI per event in out/<id>/.")
    p.add_argument("--buffer-m", type=float, default=1000.0,
                   help="Half-side in metres of the square around --point or each event (1000).")
    p.add_argument("--days-before", type=int, default=0,
                   help="Event window start, days before each event date (0).")
    p.add_argument("--days-after", type=int, default=90,
                   help="Event window end, days after each event date (90).")
    p.add_argument("--start", help="Date window start, YYYY-MM-DD.")
    p.add_argument("--end", help="Date window end, YYYY-MM-DD.")
    p.add_argument("--window", type=int, help="Window side in pixels (default: the model's).")
    p.add_argument("--overlap", type=float, default=0.5, help="Window overlap in [0, 1) (0.5).")
    p.add_argument("--chunk-size", type=int, default=512, help="Chunk side in pixels (512).")
    p.add_argument("--pixel-size", type=float, help="Metres (default: the model's, else 10).")
    p.add_argument("--batch-size", type=int, default=16, help="Windows per model call (16).")
    p.add_argument("--chunks-per-batch", type=int, default=1,
                   help="Chunks per RunInference batch (1).")
    p.add_argument("--threshold", type=float, help="Mask threshold (default: the model's).")
    p.add_argument("--min-area", type=float, default=200.0,
                   help="Smallest landslide polygon kept, m2 (200).")
    p.add_argument("--connectivity", type=int, choices=[4, 8], default=4,
                   help="Pixel connectivity of polygons (4).")
    p.add_argument("--prob-dtype", choices=["uint8", "float32"], default="uint8",
                   help="Probability COGs: uint8 (p*250, 255 nodata) or float32 (NaN nodata).")
    p.add_argument("--merge-max-px", type=int, default=50_000_000,
                   help="Also write one merged COG per mosaic up to this many pixels.")
    p.add_argument("--retries", type=int, default=3, help="Read retries per chunk (3).")
    p.add_argument("--retry-delay", type=float, default=2.0,
                   help="First retry delay in seconds, doubling (2).")
    p.add_argument("--epsg", type=int, help="Use one projected CRS instead of UTM zones.")
    p.add_argument("--stac", action=argparse.BooleanOptionalAction, default=True,
                   help="Write the STAC catalog (default on).")
    p.add_argument("--large-model", action="store_true",
                   help="Share one model per machine across worker processes.")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace a sweep of other dates already in --out (refused by default: "
                        "their chunks would mix).")
    _source_args(p)
    p.set_defaults(handler=_call("pipelines.predict:predict_cli"), accepts_extra=True)


def _scan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="Scan YAML (local or gs://): region, source, model, out, periods, "
                        "reference, predict/compare options.")
    p.add_argument("--periods", help="Only these periods, e.g. 2019,2020 (default: all).")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the plan (periods to do / skipped) without running.")
    p.add_argument("--submit-only", action="store_true",
                   help="Submit sweeps without waiting; compare the finished ones (detached "
                        "runs, Flex Template launches).")
    p.set_defaults(handler=_call("pipelines.scan:scan_cli"), accepts_extra=True)


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="Output folder (default demo-out).")
    p.add_argument("--quick", action="store_true",
                   help="A smaller world and shorter training (a few minutes).")
    p.add_argument("--seed", type=int, default=42, help="Seed of the world and training.")
    p.set_defaults(handler=_call("pipelines.demo:demo_cli"))


#: name -> (help, parser builder). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "demo": ("Run the whole multi-temporal study on the synthetic world.", _demo),
    "synth": ("Generate the synthetic mountain-valley world (imagery, DEM, inventories).",
              _synth),
    "terrain": ("Compute slope, aspect, curvature and hillshade COGs from a DEM.", _terrain),
    "export": ("Export training patches (TFRecord shards + manifest) with Beam.", _export),
    "import-l4s": ("Convert a Landslide4Sense h5 folder into shards + manifest.", _import_l4s),
    "compare": ("Compare landslide inventories: metrics, statistics, maps and a report.",
                _compare),
    "train": ("Train the U-Net on export shards and write a model artifact.", _train),
    "evaluate": ("Score a model artifact on shards: precision, recall, F1, IoU, confusion.",
                 _evaluate),
    "tune": ("Grid search (lr x filters x batch size), ranked by validation F1.", _tune),
    "predict": ("Sweep a region with a model: probability/mask COGs, mosaic, inventory, STAC.",
                _predict),
    "scan": ("Scheduled regional scan: predict + compare per period, trends, STAC.", _scan),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landslides",
        description="Map landslides from satellite imagery: export, train, predict, compare.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="More logging (-vv for debug).")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, build) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        build(p)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if verbose < 2:
        for noisy in ("apache_beam", "absl", "tensorflow", "rasterio", "urllib3", "google",
                      "fiona", "pyogrio", "matplotlib", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> None:
    """Stop on an argument that is neither the command's nor a Beam pipeline option."""
    import difflib

    from pipelines.beam_util import beam_option_strings, unknown_beam_args

    unknown = unknown_beam_args(extra)
    if not unknown:
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ours = [o for o in sub.choices[command]._option_string_actions if o.startswith("--")]
    beam = beam_option_strings()
    hints = []
    for name in unknown:
        close = list(dict.fromkeys(  # the command's own options first, then Beam's
            difflib.get_close_matches(name, ours, n=1, cutoff=0.75)
            + difflib.get_close_matches(name, beam, n=1, cutoff=0.75)))
        hints.append(f"{name}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    parser.error(f"{command}: unrecognized arguments: {', '.join(hints)}; they are neither "
                 f"options of `landslides {command}` nor Beam pipeline options")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 partial failure, 2 bad input)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        _refuse_unknown(parser, args.command, extra)
    _setup_logging(args.verbose, args.quiet)
    try:
        code = args.handler(args, extra)
    except (LandslideError, ModelError) as exc:
        print(f"landslides {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"landslides {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
