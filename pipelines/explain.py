"""``landslides explain``: Grad-CAM heat maps of a classifier or a U-Net, as PNG and COG.

Inputs (``--input``, repeatable): image files (jpg, png, GeoTIFF: any raster GDAL reads),
folders of them (class sub-folders too), globs, or an export folder, whose ``--split``
gives up to ``--limit`` patches (half of them those with the most landslide pixels, half
without any, in file order). An image must hold the model's bands: by name when its bands
are named (a 12-band GeoTIFF with band descriptions gives the model's bands), else by
count.

Outputs in ``--out``, per input ``NAME``: ``NAME.png`` (the heat map over the image's RGB
bands, or its first band, with the model's answer; outlined in cyan: an export patch's
labelled landslides for a classifier, the predicted mask or the region for a U-Net),
``NAME.tif`` (the heat map scaled to
[0, 1], float32, on the input's grid: a COG written by :mod:`pipelines.geo.cog`, when the
input is georeferenced) and one ``explanations.json`` for all of them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.classify.bands import select_bands
from model.errors import ConfigError as ModelConfigError
from pipelines import fsio
from pipelines.errors import BandError, ConfigError, DataNotFoundError
from pipelines.options.classify import ExplainOptions

log = logging.getLogger(__name__)

INDEX = "explanations.json"
#: Heat-map colours (perceptually uniform, readable in grey).
CMAP = "inferno"
#: What to do about an input without the model's bands.
MODEL_BANDS_FIX = ("give inputs holding the model's bands: named so (GeoTIFF band "
                   "descriptions), or unnamed and exactly that many, in that order")


@dataclass
class Item:
    """One input to explain.

    Attributes:
        name: File stem of its outputs.
        source: Where it came from (file, or export and patch key).
        pixels: ``(h, w, c)`` float32 in the model's band order.
        crs: CRS, ``""`` when not georeferenced.
        transform: The 6 affine coefficients, or ``None``.
        truth: The class it is labelled with, when known.
        labels: The landslide pixels of an export patch (outlined on the overlay).
    """

    name: str
    source: str
    pixels: np.ndarray = field(repr=False)
    crs: str = ""
    transform: tuple[float, ...] | None = None
    truth: str | None = None
    labels: np.ndarray | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------- inputs
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "input"


def _model_bands(pixels: np.ndarray, have: Sequence[str], want: Sequence[str],
                 where: str) -> np.ndarray:
    """The model's bands of an image (:func:`model.classify.bands.select_bands`).

    Raises:
        BandError: naming the image, its bands and the model's.
    """
    try:
        return select_bands(pixels, have, want, where, fix=MODEL_BANDS_FIX)
    except ModelConfigError as exc:
        raise BandError(str(exc)) from exc


def _image_files(path: str) -> list[str]:
    from model.classify.data import IMAGE_SUFFIXES

    out = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        out += [os.path.join(folder, f) for f in sorted(files)
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return out


def _truth_of(path: str) -> str | None:
    from model.classify.data import CLASS_DIRS

    parent = os.path.basename(os.path.dirname(path))
    return next((cls for cls, names in CLASS_DIRS.items() if parent in names), None)


def _is_export(path: str) -> bool:
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, "manifest.json"))
                                    or any(n.endswith((".tfrecord", ".tfrecord.gz"))
                                           for _, _, fs in os.walk(path) for n in fs))


def read_inputs(paths: Sequence[str], bands: Sequence[str], split: str, limit: int,
                min_share: float) -> list[Item]:
    """The items of every ``--input``, in order, in the model's bands.

    Raises:
        DataNotFoundError: a path or glob that matches nothing.
        BandError: an image without the model's bands.
    """
    from model.classify.data import read_image

    items: list[Item] = []
    for path in paths:
        if any(ch in path for ch in "*?["):
            files = sorted(fsio.glob(path))
            if not files:
                raise DataNotFoundError(f"--input {path!r} matches no file: check the glob")
        elif _is_export(path):
            items += list(_export_items(path, bands, split, limit, min_share))
            continue
        elif os.path.isdir(path):
            files = _image_files(path)
            if not files:
                raise DataNotFoundError(f"--input folder {path!r} holds no image (jpg, png, "
                                        "tif) and is no export: check the path")
        elif os.path.exists(path):
            files = [path]
        else:
            raise DataNotFoundError(f"--input {path!r} does not exist")
        for f in files:
            img = read_image(f)
            pixels = _model_bands(img.pixels, img.bands, bands, f)
            items.append(Item(_safe(os.path.splitext(os.path.basename(f))[0]), f, pixels,
                              img.crs, img.transform, _truth_of(f)))
    names = [it.name for it in items]
    for i, it in enumerate(items):  # two inputs of the same stem get distinct outputs
        if names.count(it.name) > 1:
            it.name = f"{it.name}_{i}"
    return items


def _export_items(path: str, bands: Sequence[str], split: str, limit: int,
                  min_share: float) -> Iterator[Item]:
    """Up to ``limit`` patches of an export split (see the module docstring)."""
    import tensorflow as tf

    from model import data as data_mod
    from model.schema import IGNORE_VALUE, decode_patch

    shards = data_mod.find_shards(path)
    try:
        shards.resolve_bands(bands)
    except ModelConfigError as exc:
        raise BandError(f"the export {path!r} cannot feed the model: {exc}") from exc
    files = shards.split_files(split)
    patches = []
    with data_mod.named_data_errors(files, shards.compression):
        for record in tf.data.TFRecordDataset(list(files), compression_type=shards.compression):
            patch = decode_patch(record.numpy())
            labelled = patch.mask != IGNORE_VALUE
            share = float(((patch.mask > 0) & labelled).sum() / max(labelled.sum(), 1))
            patches.append((share, patch))
    positive = sorted((p for p in patches if p[0] > 0), key=lambda p: -p[0])
    negative = [p for p in patches if p[0] == 0]
    n_pos = min(len(positive), (limit + 1) // 2)
    chosen = positive[:n_pos] + negative[:limit - n_pos]
    if len(chosen) < limit:
        chosen += positive[n_pos:n_pos + limit - len(chosen)]
    for share, patch in chosen:
        pixels = _model_bands(patch.image, patch.bands, bands, f"patch {patch.key}")
        yield Item(_safe(patch.key), f"{path} {split} {patch.key}", pixels.astype(np.float32),
                   patch.crs, tuple(patch.transform) if patch.crs else None,
                   "landslide" if share >= min_share else "non_landslide",
                   (patch.mask > 0) & (patch.mask != IGNORE_VALUE))


# ----------------------------------------------------------------------------- outputs
def _background(pixels: np.ndarray, rgb: tuple[int, int, int] | None) -> np.ndarray:
    """An RGB (or grey) picture of the image in 0..1, 2-98 % stretched per band."""
    chosen = np.asarray(pixels[..., list(rgb)] if rgb is not None else pixels[..., :1])
    n = int(chosen.shape[2])
    out = np.empty(chosen.shape, np.float64)
    for i in range(n):
        band = chosen[..., i].astype(np.float64)
        lo, hi = (float(v) for v in np.percentile(band, [2, 98]))
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return out if n == 3 else out[..., 0]


def overlay_png(path: str, pixels: np.ndarray, heat: np.ndarray, title: str,
                rgb: tuple[int, int, int] | None, opacity: float,
                outline: np.ndarray | None = None) -> str:
    """The heat map over the image, with a colour bar and a title, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = heat.shape
    fig = Figure(figsize=(4.2, 4.2 * h / max(w, 1) + 0.7))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bg = _background(pixels, rgb)
    ax.imshow(bg, cmap="gray" if bg.ndim == 2 else None, interpolation="nearest")
    im = ax.imshow(heat, cmap=CMAP, vmin=0.0, vmax=1.0, alpha=opacity, interpolation="bilinear")
    if outline is not None and outline.any() and not outline.all():
        ax.contour(outline.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="Grad-CAM (scaled)")
    with fsio.staged_output(path, suffix=".png") as local:
        fig.savefig(local, dpi=80, bbox_inches="tight")
    return path


def heat_cog(path: str, heat: np.ndarray, item: Item, tags: dict[str, str]) -> str:
    """The heat map on the input's grid as a float32 COG (the one COG writer)."""
    from affine import Affine

    from pipelines.geo.cog import CogProfile, write_cog
    from pipelines.geo.grid import PixelGrid

    assert item.transform is not None
    grid = PixelGrid.from_affine(item.crs, Affine(*item.transform), heat.shape[1],
                                 heat.shape[0])
    small = max(heat.shape) <= 512
    return write_cog(path, heat.astype(np.float32), grid, nodata=None, band_names=["gradcam"],
                     profile=CogProfile(predictor=3), tags=tags, overviews=not small)


# ----------------------------------------------------------------------------- command
def _resize(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if heat.shape == shape:
        return heat
    import tensorflow as tf

    return np.asarray(tf.image.resize(heat[..., None], shape, method="bilinear")[..., 0])


def run_explain(options: ExplainOptions) -> dict[str, Any]:
    """Explain every input with the artifact's model; returns the ``explanations.json``.

    Raises:
        InputError: an unreadable artifact, inputs without the model's bands, a bad layer
            or region.
    """
    from model.artifact import load_artifact
    from model.classify.backbones import rgb_bands
    from model.classify.data import resize
    from model.explain import explain, region_mask

    art = load_artifact(options.model)
    classifier = art.meta.get("task") == "classification"
    if options.region is not None and classifier:
        raise ConfigError("--region is for a U-Net (the summed probability of a pixel box); "
                          "a classifier explains a class: use --target")
    from model.classify.config import MIN_SHARE

    share = float((art.meta.get("input") or {}).get("min_landslide_share") or MIN_SHARE)
    items = read_inputs(options.input, art.bands, options.split, options.limit, share)
    if not items:
        raise DataNotFoundError(f"nothing to explain in {list(options.input)}")
    fsio.makedirs(options.out)
    rgb = rgb_bands(art.bands, (art.meta.get("training") or {}).get("rgb"))
    threshold = options.threshold if options.threshold is not None else art.threshold
    entries = []
    layer_used = None
    for item in items:
        h, w = item.pixels.shape[:2]
        if classifier:
            x = resize(item.pixels, art.patch_size)[None]
            exp = explain(art.model, x, layer=options.layer, target=options.target)
            heat = _resize(exp.normalized[0], (h, w))
            prob = float(exp.probability[0])
            predicted = "landslide" if prob >= art.threshold else "non_landslide"
            title = (f"P(landslide) {prob:.2f}: {predicted}"
                     + (f" (truth: {item.truth})" if item.truth else "")
                     + f"\nGrad-CAM of {options.target} at {exp.layer}")
            outline = item.labels  # the labelled landslide pixels, when known
            entry: dict[str, Any] = {"probability": prob, "predicted": predicted}
        else:
            region = region_mask((h, w), options.region) if options.region else None
            exp = explain(art.model, item.pixels[None], layer=options.layer, region=region,
                          threshold=threshold, size_multiple=art.size_multiple)
            heat = exp.normalized[0]
            mask = exp.probability[0] >= threshold
            outline = region if region is not None else mask
            what = "the box" if region is not None else "predicted landslide pixels"
            title = (f"{int(mask.sum())} px predicted landslide (threshold {threshold:.2f})\n"
                     f"Grad-CAM of P summed over {what} at {exp.layer}")
            entry = {"predicted_px": int(mask.sum()), "threshold": threshold,
                     "region": list(options.region) if options.region else None}
        layer_used = exp.layer
        png = overlay_png(fsio.join(options.out, f"{item.name}.png"), item.pixels, heat, title,
                          rgb, options.opacity, outline)
        cog = None
        if options.cog and item.crs and item.transform is not None:
            cog = heat_cog(fsio.join(options.out, f"{item.name}.tif"), heat, item, {
                "model_id": art.model_id, "layer": exp.layer, "score": f"{exp.scores[0]:.6g}",
                "target": options.target if classifier else "summed landslide probability",
                "units": "Grad-CAM scaled to [0, 1]", "source": item.source,
                "generator": "landslides explain"})
        entries.append({"name": item.name, "input": item.source, "truth": item.truth,
                        "score": float(exp.scores[0]), "png": png, "cog": cog, **entry})
        log.info("%s: %s", item.name, title.replace("\n", "; "))
    index = {"model": options.model, "model_id": art.model_id,
             "task": "classification" if classifier else "segmentation",
             "layer": layer_used, "target": options.target if classifier else None,
             "items": entries}
    fsio.write_json(fsio.join(options.out, INDEX), index)
    return index


def explain_command(options: ExplainOptions) -> int:
    """``landslides explain``: write the overlays and heat maps; say where they are."""
    index = run_explain(options)
    n_cog = sum(1 for e in index["items"] if e["cog"])
    print(f"{len(index['items'])} explanation(s) of {index['task']} model "
          f"{index['model_id']} (layer {index['layer']}) in {options.out}: "
          f"{len(index['items'])} PNG, {n_cog} COG"
          + ("" if n_cog == len(index["items"]) else
             " (inputs without georeferencing get a PNG only)"))
    for e in index["items"]:
        answer = (f"P(landslide) {e['probability']:.3f} -> {e['predicted']}"
                  if "probability" in e else f"{e['predicted_px']} px predicted landslide")
        print(f"  {e['name']}: {answer}" + (f" (truth {e['truth']})" if e["truth"] else ""))
    return 0


__all__ = ["INDEX", "Item", "explain_command", "heat_cog", "overlay_png", "read_inputs",
           "run_explain"]
