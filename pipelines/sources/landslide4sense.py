"""Landslide4Sense (L4S) archives -> our TFRecord shards + manifest.

The published layout is ``img/image_N.h5`` (dataset ``img``, 128 x 128 x 14 float: Sentinel-2
B1-B12 *including* B10, then slope and DEM from ALOS PALSAR) and, for labelled parts,
``mask/mask_N.h5`` (dataset ``mask``, 128 x 128, 1 = landslide). The values are the
dataset's own normalised numbers, not physical units, and the patches carry no
coordinates: records get ``crs=""`` and an identity transform, and splits are assigned
per patch by a seeded hash (spatial blocking is impossible without coordinates).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines import fsio
from pipelines.errors import ConfigError, DataNotFoundError, InputError
from pipelines.geo.patches import IGNORE, SPLITS, stable_unit

if TYPE_CHECKING:
    from pipelines.options.import_l4s import ImportL4SOptions

log = logging.getLogger(__name__)

L4S_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12",
             "slope", "DEM")
IDENTITY = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
_NUM = re.compile(r"(\d+)")


@dataclass(frozen=True)
class L4SPair:
    """One patch's files: the image and (for labelled parts) its mask."""

    index: int
    image: str
    mask: str | None


def find_pairs(data_dir: str) -> list[L4SPair]:
    """List ``img/image_N.h5`` files and their ``mask/mask_N.h5`` partners, by N."""
    img_dir = Path(data_dir, "img")
    if not img_dir.is_dir():
        raise DataNotFoundError(
            f"{data_dir!r} has no img/ folder: expected the Landslide4Sense layout "
            f"img/image_N.h5 (+ mask/mask_N.h5)."
        )
    pairs = []
    for p in sorted(img_dir.glob("image_*.h5")):
        m = _NUM.search(p.stem)
        if not m:
            continue
        n = int(m.group(1))
        mask = Path(data_dir, "mask", f"mask_{n}.h5")
        pairs.append(L4SPair(n, str(p), str(mask) if mask.exists() else None))
    if not pairs:
        raise DataNotFoundError(f"No img/image_N.h5 files under {data_dir!r}.")
    return sorted(pairs, key=lambda q: q.index)


def read_pair(pair: L4SPair, bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one patch: ``(h, w, len(bands))`` float32 and ``(h, w)`` uint8 labels.

    Unlabelled patches get an all-IGNORE mask. NaNs become 0 with IGNORE labels.
    """
    import h5py

    idx = [L4S_BANDS.index(b) for b in bands]
    try:
        with h5py.File(pair.image, "r") as f:
            if "img" not in f:
                raise InputError(f"{pair.image!r} has no 'img' dataset (keys: {list(f)}).")
            img = np.asarray(f["img"], dtype=np.float32)
        if img.ndim != 3 or img.shape[-1] != len(L4S_BANDS):
            raise InputError(
                f"{pair.image!r} holds an array of shape {img.shape}; Landslide4Sense images "
                f"are (h, w, 14)."
            )
        if pair.mask:
            with h5py.File(pair.mask, "r") as f:
                if "mask" not in f:
                    raise InputError(f"{pair.mask!r} has no 'mask' dataset (keys: {list(f)}).")
                mask = np.asarray(f["mask"]).astype(np.uint8)
            if mask.shape != img.shape[:2]:
                raise InputError(f"{pair.mask!r} shape {mask.shape} != image {img.shape[:2]}.")
        else:
            mask = np.full(img.shape[:2], IGNORE, np.uint8)
    except OSError as exc:
        raise InputError(f"Cannot read Landslide4Sense file {pair.image!r}: {exc}") from exc
    img = img[..., idx]
    bad = ~np.isfinite(img).all(-1)
    img[~np.isfinite(img)] = 0.0
    mask[bad] = IGNORE
    return img, mask


def assign_split(index: int, fractions: Sequence[float], seed: int) -> str:
    u = stable_unit("l4s", seed, index)
    edges = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(edges, u, side="right"))]


def import_l4s(data_dir: str, out: str, bands: Sequence[str] = L4S_BANDS,
               fractions: Sequence[float] = (0.8, 0.2, 0.0), seed: int = 0,
               num_shards: int = 0, beam_args: Sequence[str] | None = None) -> dict:
    """Convert a Landslide4Sense folder into shards + ``manifest.json`` with Beam."""
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options
    from pipelines.export import MANIFEST
    from pipelines.shards import WriteShards, finish_shards, shard_count, summarise, summary_item

    unknown = [b for b in bands if b not in L4S_BANDS]
    if unknown:
        raise ConfigError(f"Landslide4Sense has no band(s) {unknown}; it has {L4S_BANDS}.")
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"Split fractions {tuple(fractions)} must be three values summing to 1.")
    pairs = find_pairs(data_dir)
    bands = tuple(bands)
    fsio.makedirs(out)
    log.info("Importing %d Landslide4Sense patches from %s", len(pairs), data_dir)

    def encode(pair: L4SPair):
        from model.schema import encode_patch
        from pipelines.geo.patches import BandStats

        img, mask = read_pair(pair, bands)
        split = assign_split(pair.index, fractions, seed)
        rec = encode_patch(img, mask, bands, f"l4s/image_{pair.index}", "", IDENTITY, "")
        valid = mask != IGNORE if pair.mask else np.ones(mask.shape, bool)
        stats = BandStats(bands).add(img, valid) if split == "train" else None
        positive = bool((mask[mask != IGNORE] > 0).any())
        counts = {f"{split}_patches": 1, f"{split}_positive": int(positive),
                  "labelled": int(pair.mask is not None)}
        yield beam.pvalue.TaggedOutput("summary", summary_item(counts, stats))
        yield (split, rec)

    opts = pipeline_options(beam_args, "landslides-import-l4s")
    totals = {s: num_shards or shard_count(len(pairs), 128 * 128 * (4 * len(bands) + 1))
              for s in SPLITS}
    write = WriteShards(out, "gzip", totals)
    with beam.Pipeline(options=opts) as p:
        res = (p | beam.Create(pairs) | beam.Reshuffle()
               | beam.ParDo(encode).with_outputs("summary", main="patches"))
        files = res.patches | "Write" >> write

        def manifest(summary, files, temp):
            files = finish_shards(out, files, temp, totals, "gzip")
            counts = summary["counts"]
            fsio.write_json(fsio.join(out, MANIFEST), {
                "format": "lsm/v1", "compression": "gzip", "bands": list(bands),
                "patch_size": 128,
                "source": {"kind": "landslide4sense", "data_dir": data_dir,
                           "units": "Landslide4Sense normalised values (not physical units)"},
                "georeferenced": False, "ignore_value": IGNORE,
                "classes": {"background": 0, "landslide": 1},
                "patches": {s: int(counts.get(f"{s}_patches", 0)) for s in SPLITS},
                "positive_patches": {s: int(counts.get(f"{s}_positive", 0)) for s in SPLITS},
                "labelled_patches": int(counts.get("labelled", 0)),
                "files": {s: [f for f in files if f"/{s}/" in f] for s in SPLITS},
                "stats": summary["stats"],
                "config": {"fractions": list(fractions), "seed": seed, "bands": list(bands)},
            })

        _ = (res.summary | "Summarise" >> summarise(bands)
             | "Manifest" >> beam.Map(manifest, files=beam.pvalue.AsList(files),
                                      temp=write.temp))
    return fsio.read_json(fsio.join(out, MANIFEST))


def import_l4s_command(options: ImportL4SOptions, beam_args: Sequence[str] | None = None
                       ) -> int:
    """``landslides import-l4s``: :func:`import_l4s`, saying how many patches it wrote."""
    m = import_l4s(options.data_dir, options.out, options.bands, options.fractions,
                   options.seed, options.num_shards, beam_args)
    log.info("Wrote %s patches to %s", m["patches"], options.out)
    return 0
