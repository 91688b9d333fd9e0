"""Held-out quality on real Sentinel-2 imagery with sparse labels, next to plain baselines.

The shared dataset ``chittagong-s2`` (100 overlapping 256 x 256 tiles of one Sentinel-2
image, bands R, G, B, NIR, EPSG:4326, and label tiles: 0 unlabelled, 1 not landslide,
2 landslide, sparse points) goes through the real commands: the label tiles are mosaicked
into one raster (``rasterio.merge``) and the area is cut into five west-east strips (each
holds both classes; random blocks can leave a test split without a landslide), then for
each fold k (spatial cross-validation):

1. ``landslides export --source geotiff --labels ...`` with strip k as the test split and
   strip k + 1 as validation (``--split-polygons``), the other three for training, 4 px
   (40 m) cut on both sides of every edge between splits (unlabelled pixels are ignored;
   64-px patches),
2. ``landslides train`` (a small single-date U-Net on B2, B3, B4, B8: depth 3, 16 base
   filters, BCE + Dice, up to 40 epochs following the validation loss),
3. the test split's labelled pixels are scored, each once (the 64-px patches overlap by
   half, stride 32: a pixel is keyed by its place on the map and the U-Net's probability
   averaged over the patches that hold it, as a sweep blends them): F1 (precision/recall)
   at the artifact's calibrated threshold and ROC-AUC of the U-Net, against two baselines
   that need no training: every pixel a landslide (its F1 is what the class balance gives
   for free) and NDVI (low = landslide; its threshold chosen for the best F1 on the
   training pixels, each also once).

It prints one row per fold and the pooled figures (every fold's test pixels together: each
labelled pixel scored once, by the model that never saw its strip). Skips (exit 0) when
the dataset is absent.

    .venv/bin/python bench/chittagong.py [--folds 0,1,2,3,4] [--epochs 40] [--data DIR]
        [--base-filters 16] [--loss bce_dice]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

BANDS = ("B2", "B3", "B4", "B8")
BAND_MAP = "B4=1,B3=2,B2=3,B8=4"  # the tiles' band order: R, G, B, NIR
FOLDS = 5
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chittagong-s2"


def merge_labels(data: Path, out: str) -> str:
    """One label raster from the overlapping label tiles (a labelled value wins over 0)."""
    import rasterio
    from rasterio.merge import merge

    files = sorted(glob.glob(str(data / "labels" / "*.tif")))
    sources = [rasterio.open(f) for f in files]
    try:
        merge(sources, method="max", dst_path=out, dst_kwds={"compress": "deflate"})
    finally:
        for s in sources:
            s.close()
    return out


def image_bounds(data: Path) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` of the image tiles, 1e-4 degrees inside."""
    import rasterio

    bounds = []
    for f in sorted(glob.glob(str(data / "images" / "*.tif"))):
        with rasterio.open(f) as src:
            bounds.append(src.bounds)
    return (min(b.left for b in bounds) + 1e-4, min(b.bottom for b in bounds) + 1e-4,
            max(b.right for b in bounds) - 1e-4, max(b.top for b in bounds) - 1e-4)


def strip_files(bounds: tuple[float, float, float, float], n: int, work: str) -> list[str]:
    """``n`` west-east strips of equal height, north to south, as GeoJSON files."""
    import geopandas as gpd
    from shapely.geometry import box

    w, s, e, north = bounds
    step = (north - s) / n
    paths = []
    for k in range(n):
        path = os.path.join(work, f"strip{k}.geojson")
        gpd.GeoDataFrame(geometry=[box(w, north - (k + 1) * step, e, north - k * step)],
                         crs="EPSG:4326").to_file(path)
        paths.append(path)
    return paths


def cli(*words: str) -> None:
    from pipelines.cli import main

    code = main(list(words))
    if code != 0:
        raise SystemExit(f"`landslides {' '.join(words[:1])}` exited {code}")


def _grid_offset(transform: tuple[float, ...], origin: tuple[float, float]) -> tuple[int, int]:
    """``(row, col)`` of a patch's top-left pixel on the grid of a patch at ``origin``.

    Args:
        transform: The patch's affine coefficients ``(a, b, c, d, e, f)``.
        origin: ``(c, f)`` of a patch on the same grid (same ``a, b, d, e`` and CRS).

    Raises:
        ValueError: the patch is not a whole number of pixels away from ``origin``.
    """
    a, b, c, d, e, f = transform[:6]
    col, row = np.linalg.solve(np.array([[a, b], [d, e]]),
                               np.array([c - origin[0], f - origin[1]]))
    whole = np.round([row, col])
    if np.abs(whole - [row, col]).max() > 1e-3:
        raise ValueError(f"patch transform {transform} is {row:.4f}, {col:.4f} pixels from "
                         f"another patch's: the patches are not on one pixel grid")
    return int(whole[0]), int(whole[1])


def labelled_pixels(shards: str, split: str, model: Any = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A split's labelled pixels (label 0 or 1), each pixel of the map once.

    Patches cut with a stride below their size overlap, so one pixel is in up to four of
    them. Each labelled pixel is keyed by its place on the map (the record's CRS and
    ``transform``, :func:`model.schema.decode_patch`) and kept once: its bands and label
    from the first patch that holds it, its landslide probability the mean over the
    patches that hold it labelled (as a sweep blends overlapping patches).

    Args:
        shards: An ``lsm/v1`` export folder (``landslides export --out``).
        split: The split to read (``train``, ``val``, ``test``).
        model: A Keras model whose first output channel is the landslide probability; None
            to skip the probabilities.

    Returns:
        ``(x, y, p)``: ``x`` (n, bands) float32 in :data:`BANDS` order, ``y`` (n,) int64
        0/1, ``p`` (n,) the mean probability of ``model``, or None without one; pixels in
        the order of their map keys.

    Raises:
        ValueError: the records are not ``lsm/v1``, lack a band of :data:`BANDS`, are not on
            one pixel grid, or label one pixel differently.
    """
    import tensorflow as tf

    from model.data import find_shards
    from model.schema import decode_patch

    found = find_shards(shards)
    if found.fmt != "lsm":
        raise ValueError(f"{shards}: {found.fmt} records carry no transform; need lsm/v1")
    grids: dict[tuple[Any, ...], tuple[int, tuple[float, float]]] = {}
    keys: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    images: list[np.ndarray] = []
    where: list[tuple[int, np.ndarray, np.ndarray]] = []
    records = tf.data.TFRecordDataset(list(found.files[split]),
                                      compression_type=found.compression)
    for record in records:
        patch = decode_patch(record.numpy())
        rows, cols = np.nonzero((patch.mask == 0) | (patch.mask == 1))
        if not len(rows):
            continue
        missing = [b for b in BANDS if b not in patch.bands]
        if missing:
            raise ValueError(f"patch {patch.key} lacks the band(s) {missing}")
        image = patch.image[..., [patch.bands.index(b) for b in BANDS]]
        a, b, _, d, e, _ = patch.transform[:6]
        grid, origin = grids.setdefault((patch.crs, a, b, d, e),
                                        (len(grids), (patch.transform[2], patch.transform[5])))
        row0, col0 = _grid_offset(patch.transform, origin)
        keys.append(np.stack([np.full(len(rows), grid), rows + row0, cols + col0], axis=1))
        xs.append(image[rows, cols])
        ys.append(patch.mask[rows, cols].astype(np.int64))
        if model is not None:
            where.append((len(images), rows, cols))
            images.append(image)
    if not keys:
        empty = np.zeros(0, np.float64) if model is not None else None
        return np.zeros((0, len(BANDS)), np.float32), np.zeros(0, np.int64), empty
    _, first, inverse = np.unique(np.concatenate(keys), axis=0, return_index=True,
                                  return_inverse=True)
    inverse = inverse.reshape(-1)
    y_all = np.concatenate(ys)
    n = np.bincount(inverse)
    positives = np.bincount(inverse, weights=y_all)
    if np.any((positives != 0) & (positives != n)):
        raise ValueError(f"{shards} {split}: overlapping patches label a pixel differently")
    x, y = np.concatenate(xs)[first], y_all[first]
    if model is None:
        return x, y, None
    probs = np.asarray(model.predict(np.stack(images), batch_size=64, verbose=0))[..., 0]
    p_all = np.concatenate([probs[i][rows, cols] for i, rows, cols in where])
    return x, y, np.bincount(inverse, weights=p_all) / n


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1, IoU of boolean predictions ``pred`` against 0/1 labels."""
    from model.metrics import confusion_counts
    from model.metrics import scores as prf

    return prf(confusion_counts(y, pred.astype(np.float32)))


def ndvi(x: np.ndarray) -> np.ndarray:
    red, nir = x[..., BANDS.index("B4")], x[..., BANDS.index("B8")]
    return (nir - red) / np.maximum(nir + red, 1e-6)


def best_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """The threshold on ``score`` (higher = landslide) with the best F1 on ``(score, y)``."""
    cands = np.unique(np.quantile(score, np.linspace(0.0, 1.0, 201)))
    f1s = [scores(score >= t, y)["f1"] for t in cands]
    return float(cands[int(np.argmax(f1s))])


def run_fold(fold: int, data: Path, labels: str, bbox: str, strips: list[str], work: str,
             args: argparse.Namespace) -> dict:
    from model.artifact import load_artifact
    from model.classify.evaluation import roc_auc

    shards, model = os.path.join(work, f"shards-{fold}"), os.path.join(work, f"model-{fold}")
    test, val = strips[fold], strips[(fold + 1) % len(strips)]
    t0 = time.monotonic()
    cli("export", "--source", "geotiff", "--images", str(data / "images" / "*.tif"),
        "--band-map", BAND_MAP, "--scale", "1e-4", "--mask-zero", "--labels", labels,
        "--aoi", bbox, "--bands", ",".join(BANDS), "--chunk-size", "128",
        "--patch-size", "64", "--stride", "32", "--max-nodata", "0.5",
        "--negative-fraction", "1", "--split-polygons", f"val={val},test={test}",
        "--split-buffer", "4", "--out", shards)
    cli("train", "--data", shards, "--out", model, "--base-filters", str(args.base_filters),
        "--depth", "3", "--epochs", str(args.epochs), "--patience", "10", "--batch-size", "16",
        "--loss", args.loss, "--monitor", "val_loss", "--no-saved-model",
        "--seed", str(fold), *(["--stem", args.stem] if args.stem else []))
    art = load_artifact(model)
    threshold = float(art.meta["metrics"]["threshold"])
    x_test, y, p = labelled_pixels(shards, "test", art.model)
    assert p is not None
    x_train, y_train, _ = labelled_pixels(shards, "train")
    low_ndvi = -ndvi(x_test)
    t_ndvi = best_threshold(-ndvi(x_train), y_train)
    return {
        "fold": fold, "seconds": round(time.monotonic() - t0, 1),
        "test_pixels": len(y), "landslide_share": float(y.mean()) if len(y) else None,
        "unet": {**scores(p >= threshold, y), "roc_auc": roc_auc(y, p),
                 "threshold": threshold},
        "all_landslide": {**scores(np.ones(len(y), bool), y), "roc_auc": 0.5},
        "ndvi": {**scores(low_ndvi >= t_ndvi, y), "roc_auc": roc_auc(y, low_ndvi),
                 "threshold": -t_ndvi},
        "_pooled": (p >= threshold, p, low_ndvi >= t_ndvi, low_ndvi, y),
    }


def _cell(m: dict) -> str:
    return (f"{m['f1']:.2f} ({m['precision']:.2f}/{m['recall']:.2f}) "
            f"AUC {m['roc_auc']:.2f}").rjust(28)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="The chittagong-s2 folder.")
    ap.add_argument("--folds", default="0,1,2,3,4",
                    help="Folds to run, of five strips (default all: 0,1,2,3,4).")
    ap.add_argument("--epochs", type=int, default=40, help="Training epochs (patience 10).")
    ap.add_argument("--base-filters", type=int, default=16, help="U-Net base filters (16).")
    ap.add_argument("--loss", default="bce_dice", help="Training loss (bce_dice, as the demo).")
    ap.add_argument("--stem", default="", help="Widths of the U-Net's 1x1 stem, e.g. 32 (the "
                    "demo's; default: none).")
    ap.add_argument("--json", default="bench-chittagong.json", help="Where to write figures.")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "images").is_dir() or not (data / "labels").is_dir():
        print(f"skipped: {data} (images/ and labels/) is not here")
        return 0
    logging.basicConfig(level=logging.WARNING)
    from model.classify.evaluation import roc_auc

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-chittagong-") as work:
        labels = merge_labels(data, os.path.join(work, "labels.tif"))
        bounds = image_bounds(data)
        bbox = ",".join(f"{v:.5f}" for v in bounds)
        strips = strip_files(bounds, FOLDS, work)
        for fold in (int(s) for s in args.folds.split(",") if s.strip()):
            if not 0 <= fold < FOLDS:
                ap.error(f"--folds: {fold} is not one of 0..{FOLDS - 1}")
            rows.append(run_fold(fold, data, labels, bbox, strips, work, args))
    pooled = [np.concatenate(parts) for parts in zip(*(r.pop("_pooled") for r in rows))]
    unet_pred, unet_p, ndvi_pred, ndvi_score, y = pooled
    total = {"unet": {**scores(unet_pred, y), "roc_auc": roc_auc(y, unet_p)},
             "all_landslide": {**scores(np.ones(len(y), bool), y), "roc_auc": 0.5},
             "ndvi": {**scores(ndvi_pred, y), "roc_auc": roc_auc(y, ndvi_score)}}
    print("\nchittagong-s2, real Sentinel-2 (B2 B3 B4 B8, one date), sparse point labels; "
          "the test strip of each fold, labelled pixels only:\nF1 "
          "(precision/recall) and ROC-AUC")
    print(f"{'fold':>6} {'pixels':>7} {'landslide':>9} {'U-Net':>28} {'all landslide':>28} "
          f"{'NDVI (low)':>28} {'seconds':>8}")
    for r in rows:
        print(f"{r['fold']:>6} {r['test_pixels']:>7} {r['landslide_share']:>9.2f} "
              f"{_cell(r['unet'])} {_cell(r['all_landslide'])} {_cell(r['ndvi'])} "
              f"{r['seconds']:>8.0f}")
    print(f"{'pooled':>6} {len(y):>7} {y.mean():>9.2f} {_cell(total['unet'])} "
          f"{_cell(total['all_landslide'])} {_cell(total['ndvi'])}")
    Path(args.json).write_text(json.dumps({"rows": rows, "pooled": total}, indent=1))
    print(f"\nFigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
