"""Predict: sweep a region chunk by chunk with a model artifact into COGs and an inventory.

The pipeline (Beam; DirectRunner locally, Dataflow in the cloud)::

    chunks of every AOI (planned on the launcher, per UTM zone; reshuffled over workers)
      | PrepareChunks: skip chunks whose done-record matches this run's inputs; else read
      |                the chunk plus a halo from the source, find its lattice windows
      |                (the next chunk on a reader thread, during this one's inference)
      | PredictChunks: RunInference(KeyedModelHandler(KerasModelHandler)): the windows
      |                cut from the chunk's image (model loaded once per worker)
      | FinishChunks:  weighted blend, halo cropped, nodata where imagery is invalid; write
      |                prob/<key>.tif, mask/<key>.tif, then done/<key>.json (with the
      |                chunk's polygons) last (on a writer thread, during the next inference)
      +-> Finalize: per chunk, its STAC item and a small summary; per AOI and UTM zone,
          the polygons on chunk edges joined; per AOI, from the summaries:
          inventory.gpkg + inventory.parquet (streamed chunk by chunk), mosaic/*.vrt
          (+ merged COGs when small), stac/catalog.json, failed_chunks.jsonl, run.json

Seamless by construction (see :mod:`pipelines.geo.blend`): windows sit on a global
lattice and every chunk is read with a halo holding each window that touches it, so the
blended probability of a pixel does not depend on the chunking.

Resumable and idempotent: each chunk's outputs are published atomically and its
``done/<key>.json`` last, holding a signature of everything its outputs depend on (model,
source, date window, windows, threshold, vectorising, chunk, region part). A rerun skips
chunks whose record matches and redoes the rest, so a run killed half way and started
again ends with the same outputs as an uninterrupted one.

The package, in the order a chunk meets it:

* :mod:`~pipelines.options.predict`: :class:`PredictConfig`, the options;
* :mod:`~pipelines.predict.config`: :class:`SweepJob`, constants;
* :mod:`~pipelines.predict.plan`: :func:`plan_predict` -> the frozen :class:`SweepPlan`;
* :mod:`~pipelines.predict.chunk`: the per-chunk steps (prepare, finish, failure record);
* :mod:`~pipelines.predict.records`: the small per-chunk records finalize passes on;
* :mod:`~pipelines.predict.finalize`: chunk STAC items, then one AOI's mosaics, STAC
  catalog and run.json;
* :mod:`~pipelines.predict.inventory`: edge polygons joined, the inventory streamed;
* :mod:`~pipelines.predict.pipeline`: the DoFns, composite transforms, :func:`build_pipeline`;
* :mod:`~pipelines.predict.run`: :func:`run_predict` and :func:`predict_command`.
"""

from pipelines.predict.chunk import ChunkTiles
from pipelines.predict.config import (
    CONFIG,
    FAILED,
    FORMAT,
    NODATA_U8,
    PROB_DTYPES,
    PROB_SCALE,
    RUN,
    PredictConfig,
    SweepJob,
)
from pipelines.predict.plan import SweepPlan, plan_predict
from pipelines.predict.run import predict_command, run_predict

__all__ = [
    "CONFIG",
    "FAILED",
    "FORMAT",
    "NODATA_U8",
    "PROB_DTYPES",
    "PROB_SCALE",
    "RUN",
    "ChunkTiles",
    "PredictConfig",
    "SweepJob",
    "SweepPlan",
    "plan_predict",
    "predict_command",
    "run_predict",
]
