"""``landslides import-l4s``: a Landslide4Sense folder -> our TFRecord shards + manifest.

The archive is read by :mod:`pipelines.sources.landslide4sense`; this module is the Beam
pipeline that encodes its patches, writes the shards and the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipelines import fsio
from pipelines.errors import ConfigError
from pipelines.geo.patches import IGNORE, SPLITS
from pipelines.options.import_l4s import ImportL4SOptions
from pipelines.sources.landslide4sense import (
    IDENTITY,
    L4S_BANDS,
    L4S_UNITS,
    L4SPair,
    assign_split,
    find_pairs,
    read_pair,
)

log = logging.getLogger(__name__)


def import_l4s(data_dir: str, out: str, bands: Sequence[str] = L4S_BANDS,
               fractions: Sequence[float] = (0.8, 0.2, 0.0), seed: int = 0,
               num_shards: int = 0, beam_args: Sequence[str] | None = None) -> dict:
    """Convert a Landslide4Sense folder into shards + ``manifest.json`` with Beam."""
    import apache_beam as beam

    from pipelines.beam_util import pipeline_options, release
    from pipelines.export import MANIFEST
    from pipelines.shards import (
        GatherOne,
        WriteShards,
        files_by_split,
        finish_shards,
        shard_count,
        summarise,
        summary_item,
    )
    from pipelines.transforms.tagged import SplitTags

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

        img, mask, finite = read_pair(pair, bands)
        split = assign_split(pair.index, fractions, seed)
        rec = encode_patch(img, mask, bands, f"l4s/image_{pair.index}", "", IDENTITY, "")
        # NaN pixels (zero-filled by read_pair) are not values: left out of the statistics
        valid = mask != IGNORE if pair.mask else finite
        stats = BandStats(bands).add(img, valid) if split == "train" else None
        positive = bool((mask[mask != IGNORE] > 0).any())
        counts = {f"{split}_patches": 1, f"{split}_positive": int(positive),
                  "labelled": int(pair.mask is not None)}
        yield "summary", summary_item(counts, stats)
        yield "patches", (split, rec)

    opts = pipeline_options(beam_args, "landslides-import-l4s")
    totals = {s: num_shards or shard_count(len(pairs), 128 * 128 * (4 * len(bands) + 1))
              for s in SPLITS}
    write = WriteShards(out, "gzip", totals)
    with beam.Pipeline(options=opts) as p:
        res = (p | beam.Create(pairs) | beam.Reshuffle()
               | beam.ParDo(encode) | "Split" >> SplitTags("summary", "patches"))
        files = res["patches"] | "Write" >> write

        def manifest(parts, temp):
            summary, files = parts["summary"], parts["files"]
            files = finish_shards(out, files, temp, totals, "gzip")
            counts = summary["counts"]
            fsio.write_json(fsio.join(out, MANIFEST), {
                "format": "lsm/v1", "compression": "gzip", "bands": list(bands),
                "band_units": {b: L4S_UNITS for b in bands},
                "patch_size": 128,
                "source": {"kind": "landslide4sense", "data_dir": data_dir,
                           "units": "Landslide4Sense normalised values (not physical units)"},
                "georeferenced": False, "ignore_value": IGNORE,
                "classes": {"background": 0, "landslide": 1},
                "patches": {s: int(counts.get(f"{s}_patches", 0)) for s in SPLITS},
                "positive_patches": {s: int(counts.get(f"{s}_positive", 0)) for s in SPLITS},
                "labelled_patches": int(counts.get("labelled", 0)),
                "files": files_by_split(out, files),
                "stats": summary["stats"],
                "config": {"fractions": list(fractions), "seed": seed, "bands": list(bands)},
            })

        # a join, not a side input: every step then runs on any runner (pipelines.shards)
        _ = ({"summary": res["summary"] | "Summarise" >> summarise(bands),
              "files": files | "ListFiles" >> beam.combiners.ToList()}
             | "Gather" >> GatherOne()
             | "Manifest" >> beam.Map(manifest, temp=write.temp))
    release(p)
    return fsio.read_json(fsio.join(out, MANIFEST))


def import_l4s_command(options: ImportL4SOptions, beam_args: Sequence[str] | None = None
                       ) -> int:
    """``landslides import-l4s``: :func:`import_l4s`, saying how many patches it wrote."""
    m = import_l4s(options.data_dir, options.out, options.bands, options.fractions,
                   options.seed, options.num_shards, beam_args)
    log.info("Wrote %s patches to %s", m["patches"], options.out)
    return 0
