"""What a classifier trains and is scored on: image folders, or patches of export shards.

Image folders (jpg, png or GeoTIFF; read with rasterio, so any raster GDAL reads)::

    DIR/landslide/*.png   DIR/non_landslide/*.png          (a seeded share is validation)
    DIR/{train,val,test}/{landslide,non_landslide}/*.tif    (the splits as given)

``non-landslide/`` is accepted for ``non_landslide/``. jpg/png bands are ``red, green,
blue`` (alpha dropped), a GeoTIFF's are its band descriptions (else ``b1, b2, ...``,
unnamed). Every image must hold the same bands: those asked for (a model's, or
``bands``), else those of the first image that names its bands. They are picked by name
(:mod:`model.classify.bands`), so GeoTIFFs storing them in another order are reordered;
an image with unnamed bands is taken as it is when it has as many. Images are resized to
the model's square input side and held in memory (classification sets of this kind are
small).

Export shards (``landslides export``; see :mod:`model.data`): every patch with at least
one labelled pixel is an example, ``landslide`` when at least ``min_landslide_share`` of
its labelled pixels are landslide, else ``non_landslide``; the export's splits are used.
Patches stream from the shards (cached in memory when they fit).

Every split is a ``tf.data`` dataset of ``(image, label)``: float32 ``(S, S, C)`` pixels in
physical units (the model normalises them) and a float32 label (1 landslide, 0 not).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from model import data as data_mod
from model.classify.bands import DEFAULT_FIX, is_generic, select_bands
from model.classify.config import MIN_SHARE
from model.errors import ConfigError
from model.schema import IGNORE_VALUE

logger = logging.getLogger(__name__)

#: Class name -> label.
CLASSES = {"non_landslide": 0, "landslide": 1}
#: Folder names accepted for each class.
CLASS_DIRS = {"landslide": ("landslide",), "non_landslide": ("non_landslide", "non-landslide")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
#: Parsed shard patches up to this size are cached in memory.
CACHE_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class Image:
    """One image read from a file.

    Attributes:
        pixels: ``(h, w, c)`` float32.
        bands: Band names in channel order.
        crs: CRS of a georeferenced image (``""`` if none).
        transform: The 6 affine coefficients (``None`` if not georeferenced).
    """

    pixels: np.ndarray
    bands: tuple[str, ...]
    crs: str = ""
    transform: tuple[float, ...] | None = None


def _open(path: str) -> Any:
    """``rasterio.open(path)``, quiet about missing georeferencing.

    Raises:
        ConfigError: the file cannot be read.
    """
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise ConfigError(f"cannot read image {path!r}: {exc}. Give jpg, png or GeoTIFF "
                          "files") from exc


def _kept_bands(src: Any, path: str) -> tuple[list[int], tuple[str, ...]]:
    """The 0-based bands of an open file that are kept (alpha dropped), and their names.

    Raises:
        ConfigError: a paletted image.
    """
    from rasterio.enums import ColorInterp

    interp = list(src.colorinterp)
    if ColorInterp.palette in interp:
        raise ConfigError(f"{path!r} is a paletted image: convert it to RGB (e.g. "
                          "gdal_translate -expand rgb)")
    keep = [i for i, c in enumerate(interp) if c != ColorInterp.alpha] or [0]
    described = [src.descriptions[i] for i in keep]
    colours = [interp[i].name for i in keep]
    if all(described) and len(set(described)) == len(described):
        names = tuple(str(d) for d in described)
    elif set(colours) <= {"red", "green", "blue", "gray"} and len(set(colours)) == \
            len(colours):
        names = tuple(colours)
    else:
        names = tuple(f"b{i + 1}" for i in keep)
    return keep, names


def read_image(path: str) -> Image:
    """Read a jpg, png or GeoTIFF (any raster GDAL reads) with rasterio.

    Raises:
        ConfigError: the file cannot be read, or is a paletted image.
    """
    with _open(path) as src:
        keep, names = _kept_bands(src, path)
        pixels = src.read([i + 1 for i in keep]).astype(np.float32)
        crs = src.crs.to_string() if src.crs else ""
        transform = tuple(src.transform)[:6] if src.crs else None
    return Image(np.moveaxis(pixels, 0, -1), names, crs, transform)


def read_bands(path: str) -> tuple[str, ...]:
    """The band names :func:`read_image` gives a file, without reading its pixels.

    Raises:
        ConfigError: the file cannot be read, or is a paletted image.
    """
    with _open(path) as src:
        return _kept_bands(src, path)[1]


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """``(h, w, c)`` or ``(n, h, w, c)`` pixels resized to ``size`` x ``size`` (bilinear)."""
    if pixels.shape[-3:-1] == (size, size):
        return pixels.astype(np.float32, copy=False)
    return np.asarray(tf.image.resize(pixels, (size, size), antialias=True), np.float32)


@dataclass
class Split:
    """One split: how many examples, how many are landslides, and its dataset.

    Attributes:
        name: ``train``, ``val``, ``test`` or ``all``.
        count: Examples.
        positives: Landslide examples.
        dataset: ``dataset(batch_size, training, seed)`` -> batches of ``(image, label)``.
        ids: What each example is (file paths; empty for shard patches).
    """

    name: str
    count: int
    positives: int
    dataset: Callable[[int, bool, int], tf.data.Dataset] = field(repr=False)
    ids: tuple[str, ...] = ()


@dataclass
class ClassifyData:
    """Everything a run reads from ``--data``.

    Attributes:
        kind: ``images`` or ``shards``.
        source: The path given.
        bands: Band names in channel order.
        image_size: Side of the model input.
        splits: The splits found.
        mean: Per-band mean of the training examples (``None`` for scoring data).
        std: Per-band standard deviation of the training examples.
        manifest: The export's manifest (shards).
        pixel_size: Metres per pixel, when known.
    """

    kind: str
    source: str
    bands: tuple[str, ...]
    image_size: int
    splits: dict[str, Split]
    mean: list[float] | None = None
    std: list[float] | None = None
    manifest: dict | None = None
    pixel_size: float | None = None

    def split(self, name: str) -> Split:
        """The split ``name``; a clear error when the data have none."""
        if name not in self.splits:
            raise ConfigError(f"{self.source!r} has no {name!r} split (it has "
                              f"{sorted(self.splits) or 'none'}): "
                              + (f"lay images out as {self.source}/{name}/landslide/..."
                                 if self.kind == "images" else
                                 "export with a fraction for it, or score another --split"))
        return self.splits[name]


def augment_batch(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A random flip and 90-degree rotation of one image (stateless, from ``seed``)."""
    image = tf.image.stateless_random_flip_left_right(image, seed)
    image = tf.image.stateless_random_flip_up_down(image, seed + 1)
    k = tf.random.stateless_uniform((), seed + 2, 0, 4, dtype=tf.int32)
    return tf.image.rot90(image, k)


def _finish(ds: tf.data.Dataset, n: int, batch_size: int, training: bool, seed: int,
            augment: bool) -> tf.data.Dataset:
    if training:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
        if augment:
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, s: (augment_batch(pair[0], s), pair[1]),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).with_options(data_mod.epoch_options()).prefetch(
        tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- images
def _class_folders(folder: str) -> dict[str, str] | None:
    """``{class: path}`` of the class folders in ``folder``, ``None`` when it has neither."""
    found = {}
    for cls, names in CLASS_DIRS.items():
        for name in names:
            if os.path.isdir(os.path.join(folder, name)):
                found[cls] = os.path.join(folder, name)
                break
    return found or None


def is_image_folder(path: str) -> bool:
    """Whether ``path`` is laid out as class folders (directly or under split folders)."""
    if not os.path.isdir(path):
        return False
    return _class_folders(path) is not None or any(
        _class_folders(os.path.join(path, s)) for s in SPLITS
        if os.path.isdir(os.path.join(path, s)))


def _image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."))


def _listing(folder: str) -> list[tuple[str, int]]:
    """``(file, label)`` of both class folders of ``folder``; refuses a missing class."""
    classes = _class_folders(folder) or {}
    missing = [c for c in CLASS_DIRS if c not in classes]
    if missing:
        present = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
        raise ConfigError(
            f"{folder!r} lacks the class folder(s) {missing} (it holds "
            f"{present or 'no folder'}): lay images out as {folder}/landslide/*.png and "
            f"{folder}/non_landslide/*.png")
    out = []
    for cls, sub in classes.items():
        files = _image_files(sub)
        if not files:
            raise ConfigError(f"class folder {sub!r} holds no image ({', '.join(IMAGE_SUFFIXES)})"
                              ": put that class's images there")
        out += [(f, CLASSES[cls]) for f in files]
    return out


def _reference_bands(files: Sequence[str]) -> tuple[str, ...]:
    """The bands of a folder: those of its first image that names them, else its first's.

    Taking the first *named* image, not merely the first, keeps an unnamed image that
    sorts first from making every named one a refusal: named images are picked by name
    and unnamed ones by count wherever they sort.
    """
    named = (bands for bands in map(read_bands, files) if not is_generic(bands))
    return next(named, None) or read_bands(files[0])


def _read_all(files: Sequence[str], size: int | None, bands: Sequence[str], fix: str
              ) -> tuple[np.ndarray, int]:
    """Read images, pick ``bands`` of each (:func:`~model.classify.bands.select_bands`), resize.

    Args:
        files: The images.
        size: Side to resize to (default: the first image's height).
        bands: The bands to feed, in order.
        fix: What to do about an image without them, for the message.

    Returns:
        ``(n, size, size, len(bands))`` float32 pixels, and ``size``.

    Raises:
        ConfigError: an image without ``bands``: naming it, its bands and ``bands``.
    """
    arrays = []
    for path in files:
        img = read_image(path)
        pixels = select_bands(img.pixels, img.bands, bands, f"image {path!r}", fix)
        if size is None:
            size = int(pixels.shape[0])
        arrays.append(resize(pixels, size))
    assert size is not None
    return np.stack(arrays), size


def _numpy_split(name: str, x: np.ndarray, y: np.ndarray, ids: Sequence[str],
                 augment: bool) -> Split:
    def dataset(batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)))
        return _finish(ds, len(x), batch_size, training, seed, augment)

    return Split(name, len(x), int(y.sum()), dataset, tuple(ids))


def load_images(path: str, image_size: int | None = None, val_fraction: float = 0.2,
                seed: int = 0, augment: bool = True, bands: Sequence[str] | None = None,
                scoring: bool = False) -> ClassifyData:
    """Image folders -> :class:`ClassifyData` (see the module docstring).

    Args:
        path: The folder.
        image_size: Model input side (default: the first image's height).
        val_fraction: Share of each class held out when there is no ``val/`` folder.
        seed: Seed of that split.
        augment: Flip and rotate training images.
        bands: The bands to feed, in order (a model's), picked by name from images that
            name their bands; default: those of the first image that names them (else the
            first image's).
        scoring: Scoring data: class folders directly in ``path`` are the split ``all``;
            no statistics are computed.

    Raises:
        ConfigError: missing class folders, unreadable images, an image without the
            bands (named: lacking one; unnamed: another count), no validation images.
    """
    if not is_image_folder(path):
        raise ConfigError(
            f"{path!r} is neither an image folder (landslide/ and non_landslide/ folders, or "
            f"train/ val/ test/ with them) nor an export (manifest.json and shards)")
    listed: dict[str, list[tuple[str, int]]] = {}
    if _class_folders(path) is not None:
        items = _listing(path)
        if scoring:
            listed["all"] = items
        else:
            listed.update(_stratified(items, val_fraction, seed, path))
    else:
        for split in SPLITS:
            folder = os.path.join(path, split)
            if os.path.isdir(folder) and _class_folders(folder) is not None:
                listed[split] = _listing(folder)
    if not scoring and "val" not in listed:
        raise ConfigError(f"{path!r} has no validation images: add {path}/val/landslide/ and "
                          f"{path}/val/non_landslide/, or put the class folders directly in "
                          f"{path} (a --val-fraction is held out)")
    if bands is None:
        names = _reference_bands([f for items in listed.values() for f, _ in items])
        fix = (f"give every image the same bands {list(names)}: name them so (GeoTIFF band "
               f"descriptions), convert it, or move it out of the folder")
    else:
        names, fix = tuple(bands), DEFAULT_FIX
    size = image_size
    splits, arrays = {}, {}
    for split, items in listed.items():
        files = [f for f, _ in items]
        x, size = _read_all(files, size, names, fix)
        y = np.array([label for _, label in items], np.int64)
        arrays[split] = x
        splits[split] = _numpy_split(split, x, y, files, augment and split == "train")
    assert size is not None  # is_image_folder: at least one split was read
    mean = std = None
    if "train" in arrays:
        px = arrays["train"].reshape(-1, len(names)).astype(np.float64)
        mean, std = px.mean(0).tolist(), px.std(0).tolist()
    logger.info("%s: images of %d band(s) %s at %d px: %s", path, len(names), list(names), size,
                {k: f"{v.count} ({v.positives} landslide)" for k, v in splits.items()})
    return ClassifyData("images", path, names, size, splits, mean, std)


def _stratified(items: list[tuple[str, int]], fraction: float, seed: int, path: str
                ) -> dict[str, list[tuple[str, int]]]:
    """A seeded share of each class as validation, the rest as training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in (0, 1):
        group = [it for it in items if it[1] == label]
        order = rng.permutation(len(group))
        n_val = round(fraction * len(group))
        if fraction > 0 and len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    if not val:
        raise ConfigError(f"no validation image taken from {path!r} (val_fraction {fraction}): "
                          "raise --val-fraction, or add a val/ folder")
    return {"train": train, "val": val}


# ----------------------------------------------------------------------------- shards
def patch_label(mask: tf.Tensor, min_share: float) -> tuple[tf.Tensor, tf.Tensor]:
    """``(label, labelled)`` of a ``(h, w, 1)`` mask: landslide share >= ``min_share``."""
    labelled = tf.not_equal(mask, IGNORE_VALUE)
    landslide = tf.logical_and(labelled, mask > 0)
    n = tf.reduce_sum(tf.cast(labelled, tf.float32))
    share = tf.reduce_sum(tf.cast(landslide, tf.float32)) / tf.maximum(n, 1.0)
    return tf.cast(share >= min_share, tf.float32), n > 0


def load_shards(path: str, min_share: float, image_size: int | None = None,
                bands: Sequence[str] | None = None, augment: bool = True,
                allow_partial: bool = False, scoring: bool = False) -> ClassifyData:
    """Export shards -> :class:`ClassifyData` of patches labelled by their landslide share.

    Raises:
        ConfigError: bands the shards lack, an incomplete export, a split without patches.
    """
    from model.train.inputs import check_complete

    shards = data_mod.find_shards(path)
    check_complete(shards, allow_partial, "classify")
    chosen = shards.resolve_bands(bands)
    size = int(image_size or shards.patch_size)
    splits: dict[str, Split] = {}
    for split in SPLITS:
        files = shards.files.get(split, ()) + (shards.files.get("other", ())
                                                 if split == "train" else ())
        if not files:
            continue
        cache = (data_mod.estimated_bytes(shards, split, len(chosen)) or 0) <= CACHE_LIMIT_BYTES
        splits[split] = _shard_split(shards, split, files, chosen, size, min_share,
                                     augment and split == "train", cache)
    splits = {k: v for k, v in splits.items() if v.count}
    if not splits:
        raise ConfigError(f"no patch with labelled pixels in {path!r}: nothing to classify")
    mean = std = None
    if not scoring and "train" in splits:
        mean, std, _ = data_mod.normalisation_stats(shards, chosen)
    manifest = shards.manifest or None
    logger.info("%s: patches of %d band(s) at %d px, landslide when >= %.3g of the pixels: %s",
                path, len(chosen), size, min_share,
                {k: f"{v.count} ({v.positives} landslide)" for k, v in splits.items()})
    return ClassifyData("shards", path, tuple(chosen), size, splits, mean, std, manifest,
                        (manifest or {}).get("pixel_size"))


def _shard_split(shards: data_mod.ShardSet, split: str, files: Sequence[str],
                 bands: Sequence[str], size: int, min_share: float, augment: bool,
                 cache: bool) -> Split:
    def examples() -> tf.data.Dataset:
        ds = data_mod.shard_dataset(shards, files, bands, 64).unbatch()
        ds = ds.map(lambda image, mask: (image, *patch_label(mask, min_share)))
        ds = ds.filter(lambda image, label, keep: keep)
        ds = ds.map(lambda image, label, keep: (image, label))
        if size != shards.patch_size:
            ds = ds.map(lambda image, label: (tf.image.resize(image, (size, size),
                                                              antialias=True), label))
        return ds

    count = positives = 0
    with data_mod.named_data_errors(files, shards.compression):
        for _, labels in examples().map(lambda i, lab: (0, lab)).batch(256).as_numpy_iterator():
            count += len(labels)
            positives += int(labels.sum())
    cached = examples().cache() if cache else None

    def dataset(batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
        return _finish(cached if cached is not None else examples(), count, batch_size,
                       training, seed, augment)

    return Split(split, count, positives, dataset)


def load_data(path: str, *, min_share: float = MIN_SHARE, image_size: int | None = None,
              bands: Sequence[str] | None = None, val_fraction: float = 0.2, seed: int = 0,
              augment: bool = True, allow_partial: bool = False,
              scoring: bool = False) -> ClassifyData:
    """Image folders or export shards, whichever ``path`` holds.

    Raises:
        ConfigError: ``path`` is neither, or its content is unusable (the message says why).
    """
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"data {path!r} does not exist: give an image folder (landslide/ "
                          "and non_landslide/) or an export folder (manifest.json and shards)")
    if is_image_folder(path):
        return load_images(path, image_size, val_fraction, seed, augment, bands, scoring)
    try:
        return load_shards(path, min_share, image_size, bands, augment, allow_partial,
                           scoring)
    except ConfigError as exc:
        if "no TFRecord shards" not in str(exc):
            raise
        raise ConfigError(
            f"{path!r} is neither an image folder (landslide/ and non_landslide/ folders, or "
            f"train/ val/ test/ holding them) nor an export (manifest.json and TFRecord "
            f"shards): lay it out as one of them") from exc


def class_weights(split: Split) -> dict[int, float]:
    """Weights that make both classes count as much: ``n / (2 n_class)``.

    Raises:
        ConfigError: the split lacks one of the classes.
    """
    n, pos = split.count, split.positives
    if pos == 0 or pos == n:
        which = "landslide" if pos == 0 else "non_landslide"
        raise ConfigError(f"the {split.name} split has no {which} example ({n} examples): a "
                          f"classifier needs both classes in training and validation"
                          + (" (lower --min-landslide-share?)" if pos == 0 else ""))
    return {0: n / (2.0 * (n - pos)), 1: n / (2.0 * pos)}


def arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All ``(images, labels)`` of a batched dataset, as numpy."""
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0,)), np.zeros((0,))
    return np.concatenate(xs), np.concatenate(ys)


__all__ = [
    "CLASSES",
    "CLASS_DIRS",
    "IMAGE_SUFFIXES",
    "ClassifyData",
    "Image",
    "Split",
    "arrays",
    "class_weights",
    "is_image_folder",
    "load_data",
    "load_images",
    "load_shards",
    "patch_label",
    "read_bands",
    "read_image",
    "resize",
]
