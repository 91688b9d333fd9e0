"""Running an export: the Beam pipeline's wiring, the shard counts and the manifest."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence

from pipelines import fsio
from pipelines.errors import OutputError
from pipelines.export.config import CONFIG, FAILED, MANIFEST, RUNNING, ExportConfig
from pipelines.export.plan import plan_export
from pipelines.geo import bands as bandreg
from pipelines.geo.patches import SPLITS
from pipelines.options.export import ExportOptions

log = logging.getLogger(__name__)


def run_export(config: ExportConfig, beam_args: Sequence[str] | None = None) -> dict:
    """Run the export pipeline; returns the manifest (also written to ``out``).

    Raises:
        InputError: bad configuration or input, before anything is launched.
        OutputError: the output folder or bucket cannot be written.
    """
    import apache_beam as beam

    from pipelines.beam_util import (
        in_process,
        keeps_finish_bundle_outputs,
        pipeline_options,
        release,
        submitted_only,
    )
    from pipelines.shards import GatherOne, WriteShards, summarise
    from pipelines.workers import for_workers

    plan = plan_export(config)
    opts = pipeline_options(beam_args, "landslides-export")
    for_workers(plan.sources, opts)  # e.g. each worker process's part of a quota
    fsio.check_writable(config.out)
    # validated: from here on the folder is this run's (its config comes with its manifest)
    forget_previous_run(config.out)
    fsio.write_json(fsio.join(config.out, RUNNING), {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": config.to_dict()})
    by_split = {s: sum(1 for v in plan.splits.values() if v == s) for s in SPLITS}
    log.info("Exporting %d chunks (train %d, val %d, test %d) of %s%s to %s; input stack: %s",
             len(plan.chunks), by_split["train"], by_split["val"], by_split["test"],
             plan.region.name, f" for years {list(config.years)}" if config.years else "",
             config.out, config.stack.describe() if config.stack else "")
    from pipelines.export.cut import CutPatches

    # chunk by chunk, every period of a chunk in a row: a temporal stack's periods share
    # dates (2016's references are 2012-2015, 2017's 2013-2016), so a worker reading them
    # one after another decodes each date's window once (sources.geotiff.cache); shard
    # contents do not depend on the order (records are sorted)
    elements = [(str(c.key), plan.splits[c.key], c.region_wkb, c.spec.to_dict(), i)
                for c in plan.chunks for i in range(len(plan.sources))]
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write = WriteShards(config.out, config.compression, shard_totals(config, by_split,
                                                                     len(plan.sources)))
    with beam.Pipeline(options=opts) as p:
        res = (p
               # spread over workers, unless one worker in this process takes them all
               | "Chunks" >> beam.Create(elements, reshuffle=not in_process(opts))
               | "Cut" >> CutPatches(config, plan.sources, len(elements),
                                     overlap=keeps_finish_bundle_outputs(opts)))
        files = res["records"] | "Write" >> write
        summary = res["summary"] | "Summarise" >> summarise(config.channels)
        # the manifest joins the summary and the file list (no side input): the last step
        # then depends on every other, which Beam 2.77's Dask runner needs (it computes
        # only the pipeline's last step and what that step reads)
        _ = ({"summary": summary, "files": files | "ListFiles" >> beam.combiners.ToList()}
             | "Gather" >> GatherOne()
             | "Manifest" >> beam.Map(
                 _write_manifest, config=config, plan_info={
                     "region": plan.region.name, "chunks": len(plan.chunks),
                     "chunks_per_split": by_split, "landslides_in_aoi": plan.landslides_in_aoi,
                     "source": plan.source.describe(), "started": started},
                 temp=write.temp, totals=write.totals))
    release(p)
    if submitted_only(opts):
        log.info("Dataflow job written to %s; it writes %s in %s when it ends.",
                 opts.get_all_options()["template_location"], MANIFEST, config.out)
        return {}
    manifest = fsio.read_json(fsio.join(config.out, MANIFEST))
    n_failed = manifest["chunks_failed"]
    if n_failed:
        log.error("%d chunk(s) failed; see %s", n_failed, fsio.join(config.out, FAILED))
    log.info("Wrote %s patches: %s", sum(manifest["patches"].values()), manifest["patches"])
    return manifest


def forget_previous_run(out: str) -> None:
    """Delete the manifest, failure list and configuration an earlier export left in ``out``.

    A rerun overwrites the earlier shards of the same names; should it die before its own
    manifest, the earlier manifest would describe a mix of both runs' shards (and an
    earlier ``failed_chunks.jsonl`` would outlive a rerun without failures). Only these
    files, which export writes when a run ends, are removed: the shards stay.

    Raises:
        OutputError: one of them cannot be deleted.
    """
    for name in (MANIFEST, FAILED, CONFIG):
        path = fsio.join(out, name)
        if not fsio.exists(path):
            continue
        try:
            fsio.delete(path)
        except OSError as exc:
            raise OutputError(f"Cannot delete {path!r}, left by an earlier export into "
                              f"{out!r}: {exc}. Fix the permissions or choose another "
                              f"--out.") from exc
        log.info("Removed %s of an earlier export; this run writes its own.", path)


def shard_totals(config: ExportConfig, chunks_per_split: dict[str, int], sources: int
                 ) -> dict[str, int]:
    """Shards per split: ``num_shards``, or enough that none exceeds ``SHARD_BYTES``.

    The automatic count bounds a split's patches by its chunks times the patches a chunk
    can hold at the stride, for every source (date) exported.
    """
    from pipelines.shards import shard_count

    if config.num_shards:
        return {s: config.num_shards for s in SPLITS}
    size = config.patch.size
    per_side = -(-config.chunk_size // (config.patch.stride or size))
    record = size * size * (4 * len(config.channels) + 1)
    return {s: shard_count(chunks_per_split.get(s, 0) * per_side ** 2 * sources, record)
            for s in SPLITS}


def _write_manifest(parts: dict, config: ExportConfig, plan_info: dict, temp: str,
                    totals: dict[str, int]) -> None:
    from pipelines.geo.patches import IGNORE
    from pipelines.shards import files_by_split, finish_shards

    summary, files = parts["summary"], parts["files"]

    files = finish_shards(config.out, files, temp, totals, config.compression)
    counts, stats, failed = summary["counts"], summary["stats"], summary["failed"]
    manifest = {
        "format": "lsm/v1",
        "compression": config.compression,
        "bands": list(config.channels),
        "band_units": {b: bandreg.get(b).unit for b in config.channels},
        "stack": config.stack.to_dict() if config.stack else None,
        "years": list(config.years),
        "patch_size": config.patch.size,
        "pixel_size": config.pixel_size,
        "ignore_value": IGNORE,
        "classes": _classes(config),
        "date": config.date if not config.years else ",".join(
            f"{s}/{e}" for s, e, _ in config.periods()),
        "patches": {s: int(counts.get(f"{s}_patches", 0)) for s in SPLITS},
        "positive_patches": {s: int(counts.get(f"{s}_positive", 0)) for s in SPLITS},
        "dropped": {"nodata": int(counts.get("dropped_nodata", 0)),
                    "negative": int(counts.get("dropped_negative", 0)),
                    "unlabelled": int(counts.get("dropped_unlabelled", 0))},
        "candidates": int(counts.get("candidates", 0)),
        "chunks_done": int(counts.get("chunks", 0)),
        "chunks_failed": len(failed),
        "files": files_by_split(config.out, files),
        "stats": stats,
        "config": config.to_dict(),
        **plan_info,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if failed:
        fsio.write_bytes(fsio.join(config.out, FAILED),
                         "".join(json.dumps(f) + "\n" for f in failed).encode())
    fsio.write_json(fsio.join(config.out, CONFIG), manifest["config"])
    fsio.write_json(fsio.join(config.out, MANIFEST), manifest)  # the run is complete
    fsio.delete(fsio.join(config.out, RUNNING))


def _classes(config: ExportConfig) -> dict[str, int]:
    if config.labels:
        from pipelines.geo.labels import LabelMap

        ids = sorted(set(LabelMap.parse(config.label_map).classes) | {0})
        if ids == [0, 1]:
            return {"background": 0, "landslide": 1}
        return {"background": 0, **{f"class_{i}": i for i in ids if i}}
    if config.classes:
        return {"background": 0, **config.classes}
    return {"background": 0, "landslide": 1}


# ----------------------------------------------------------------------------- CLI
def export_command(options: ExportOptions, beam_args: Sequence[str] | None = None) -> int:
    """``landslides export``: run the export; 1 when some chunks failed, else 0."""
    manifest = run_export(options.to_config(), beam_args)
    return 1 if manifest.get("chunks_failed") else 0
