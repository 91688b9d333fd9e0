"""The predict command's configuration and its plain values: constants, config, one AOI.

Owns the output names and encodings every other predict module shares, and
:class:`SweepJob` (one AOI of a sweep, as planned on the launcher). :class:`PredictConfig`
(saved as ``predict_config.json`` beside the outputs) is defined with its options in
:mod:`pipelines.options.predict` and re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines import fsio
from pipelines.geo.grid import Region
from pipelines.options.predict import PROB_DTYPES, PredictConfig

#: Version tag of the sweep's records (done-records, run.json, COG tags).
FORMAT = "landslides-predict/1"
#: A sweep's run record, written last in each AOI's folder.
RUN = "run.json"
#: Dead letters: one JSON line per failed chunk and stage.
FAILED = "failed_chunks.jsonl"
#: The configuration, saved in the output folder before the run.
CONFIG = "predict_config.json"
#: ``uint8`` probabilities are ``p * PROB_SCALE`` rounded.
PROB_SCALE = 250.0
#: Nodata of ``uint8`` probabilities and of masks.
NODATA_U8 = 255
#: The band names of the probability and mask COGs (compare refuses the first as a mask).
PROB_BAND, MASK_BAND = "landslide_probability", "landslide"


@dataclass(frozen=True)
class SweepJob:
    """One AOI of a sweep (a run has one, or one per event).

    Attributes:
        name: The event's name, or ``""`` for the one AOI of an ``aoi``/``point`` run.
        out: The AOI's output folder.
        region: The AOI.
        start: Date window start.
        end: Date window end.
        date: The event's date, or ``"start/end"``, as written in the inventory.
        source: Index of the AOI's source in the plan's sources (one per date window).
        n_chunks: Chunks planned for the AOI.
        area_km2: Area of the AOI's chunk regions.
        epsgs: The CRSs of its chunks.
        base_signature: Hash of the inputs every chunk of the AOI shares.
    """

    name: str
    out: str
    region: Region
    start: str | None
    end: str | None
    date: str
    source: int
    n_chunks: int
    area_km2: float
    epsgs: tuple[int, ...]
    base_signature: str

    @property
    def label(self) -> str:
        return self.name or self.region.name

    def path(self, *parts: str) -> str:
        return fsio.join(self.out, *parts)


__all__ = [
    "CONFIG",
    "FAILED",
    "FORMAT",
    "NODATA_U8",
    "PROB_DTYPES",
    "PROB_SCALE",
    "RUN",
    "PredictConfig",
    "SweepJob",
]
