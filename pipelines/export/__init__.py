"""Export: imagery + a landslide inventory -> TFRecord training shards + manifest.json.

The pipeline (Beam; DirectRunner locally, Dataflow in the cloud)::

    chunks of the AOI (planned on the launcher, split assigned by spatial blocks;
      |                reshuffled over workers)
      | CutChunk: read the chunk once from the source, rasterise the inventory, cut and
      |           select patches, encode them (model.schema), per-band stats of train
      |           patches; chunks that fail become failure records (the next chunks
      |           are read on a thread while this one is cut and encoded)
      +-> (split, record) -> WriteShards: out/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz
      +-> per-chunk summaries -> Summary (counts, stats, failures) -> manifest.json
                                        (+ failed_chunks.jsonl, export_config.json)

Everything the pipeline needs is validated on the launcher before it starts: the AOI,
the date window, the source's bands, the inventory, and that the output is writable.
Then the manifest, failure list and configuration of an earlier export into the same
folder are deleted: the manifest, written last, is the mark of a complete run.
"""

from pipelines.export.config import CONFIG, FAILED, MANIFEST, ExportConfig
from pipelines.export.plan import ExportPlan, plan_export
from pipelines.export.run import export_command, run_export, shard_totals

__all__ = ["CONFIG", "FAILED", "MANIFEST", "ExportConfig", "ExportPlan", "export_command",
           "plan_export", "run_export", "shard_totals"]
