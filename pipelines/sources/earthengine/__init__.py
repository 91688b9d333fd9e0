"""Earth Engine imagery: a Sentinel-2 composite plus a DEM and its terrain derivatives.

The Earth Engine expression is built **once**, on the launcher, serialised to JSON and
carried as a string inside the (pickled) source; each worker initialises the client and
deserialises it. Pixels come from ``ee.data.computePixels`` on exactly the requested
:class:`~pipelines.geo.grid.PixelGrid` (any projected CRS and transform), split so that
every request stays under Earth Engine's 48 MiB limit, within the job's request budget;
429/5xx answers, connection errors and timeouts are retried with jittered exponential
backoff.

The modules, one job each:

* :mod:`~pipelines.sources.earthengine.config`: :class:`EEConfig` (what to compute, how to
  reach Earth Engine) and the limits, endpoints, DEMs and bands it checks against.
* :mod:`~pipelines.sources.earthengine.expression`: :func:`build_image`, the cloud-masked
  composite and terrain bands as one Earth Engine image.
* :mod:`~pipelines.sources.earthengine.client`: the process-wide ``ee`` client
  (:func:`initialize`) and :func:`is_retryable`.
* :mod:`~pipelines.sources.earthengine.budget`: the job's request budget (Earth Engine's
  per-project quota) split over its worker processes, and each process's part (slots,
  pacing, Beam's adaptive throttler).
* :mod:`~pipelines.sources.earthengine.credentials`: credentials each worker makes for
  itself in its DoFn's setup (application default credentials; a token variable for
  local runs only).
* :mod:`~pipelines.sources.earthengine.pixels`: computePixels requests (:func:`plan_blocks`,
  :func:`grid_request`) and decoding their answers.
* :mod:`~pipelines.sources.earthengine.source`: :class:`EarthEngineSource`, which reads
  blocks with retries.
"""

from pipelines.sources.earthengine.client import initialize, is_retryable
from pipelines.sources.earthengine.config import (
    AVAILABLE_BANDS,
    COMPOSITES,
    DEFAULT_BANDS,
    DEFAULT_ENDPOINT,
    DEFAULT_REQUEST_BYTES,
    DEMS,
    EE_MAX_DIMENSION,
    EE_REQUEST_LIMIT,
    HIGH_VOLUME_ENDPOINT,
    L1C_COLLECTION,
    L2A_COLLECTION,
    NODATA,
    NON_HARMONIZED_COLLECTIONS,
    EEConfig,
)
from pipelines.sources.earthengine.expression import (
    CLOUD_PROBABILITY_COLLECTION,
    SCL_MASKED_CLASSES,
    build_image,
)
from pipelines.sources.earthengine.pixels import Block, grid_request, plan_blocks
from pipelines.sources.earthengine.source import EarthEngineSource

__all__ = [
    "AVAILABLE_BANDS",
    "CLOUD_PROBABILITY_COLLECTION",
    "COMPOSITES",
    "DEFAULT_BANDS",
    "DEFAULT_ENDPOINT",
    "DEFAULT_REQUEST_BYTES",
    "DEMS",
    "EE_MAX_DIMENSION",
    "EE_REQUEST_LIMIT",
    "HIGH_VOLUME_ENDPOINT",
    "L1C_COLLECTION",
    "L2A_COLLECTION",
    "NODATA",
    "NON_HARMONIZED_COLLECTIONS",
    "SCL_MASKED_CLASSES",
    "Block",
    "EEConfig",
    "EarthEngineSource",
    "build_image",
    "grid_request",
    "initialize",
    "is_retryable",
    "plan_blocks",
]
