"""The options of ``landslides import-l4s``: a Landslide4Sense h5 folder -> shards."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options.export import _fractions, _names
from pipelines.options.fields import option
from pipelines.sources.landslide4sense import L4S_BANDS


@dataclass(frozen=True)
class ImportL4SOptions:
    """The parameters of :func:`pipelines.sources.landslide4sense.import_l4s`."""

    data_dir: str = option(help="Folder with img/image_N.h5 (+ mask/).")
    out: str = option(help="Output folder for shards (local or gs://).")
    bands: tuple[str, ...] = option(L4S_BANDS, "Comma-separated subset of the 14 L4S bands "
                                    "(default all).", parse=_names)
    fractions: tuple[float, float, float] = option((0.8, 0.2, 0.0), "train,val,test "
                                                   "fractions.", flag="--split",
                                                   parse=_fractions)
    seed: int = option(0, "Seed of the per-patch split.")
    num_shards: int = option(0, "Shards per split (0: auto).")


__all__ = ["ImportL4SOptions"]
