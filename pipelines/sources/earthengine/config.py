"""What the Earth Engine source computes and how it talks to Earth Engine: :class:`EEConfig`.

Also the limits every request must respect (Earth Engine's 48 MiB and 32768-pixel caps),
the endpoints, the DEMs and composites one can choose, the bands the source can compute,
and :data:`NODATA`, the value the expression writes into masked pixels.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Literal

from pipelines.errors import ConfigError
from pipelines.geo import bands as bandreg

__all__ = [
    "AVAILABLE_BANDS",
    "BYTES_PER_VALUE",
    "COMPOSITES",
    "DEFAULT_BANDS",
    "DEFAULT_CONCURRENT_REQUESTS",
    "DEFAULT_ENDPOINT",
    "DEFAULT_REQUESTS_PER_SECOND",
    "DEFAULT_REQUEST_BYTES",
    "DEMS",
    "EE_MAX_DIMENSION",
    "EE_REQUEST_LIMIT",
    "HIGH_VOLUME_ENDPOINT",
    "L1C_COLLECTION",
    "L2A_COLLECTION",
    "NODATA",
    "NON_HARMONIZED_COLLECTIONS",
    "TRANSPORT_FIELDS",
    "EEConfig",
]

#: Earth Engine's limit on the (uncompressed) size of one computePixels answer.
EE_REQUEST_LIMIT = 48 * 2**20
#: Default request budget: the limit minus a margin for the NPY header and rounding.
DEFAULT_REQUEST_BYTES = EE_REQUEST_LIMIT - 2**20
#: Earth Engine's limit on the width and height of one computePixels grid.
EE_MAX_DIMENSION = 32768
#: The default Cloud API endpoint and the high-volume one (for many small requests).
DEFAULT_ENDPOINT = "https://earthengine.googleapis.com"
HIGH_VOLUME_ENDPOINT = "https://earthengine-highvolume.googleapis.com"
#: Value the expression writes into masked pixels (``unmask``); read back as NaN.
NODATA = -1.0e30
#: Bytes of one value in a request (float32).
BYTES_PER_VALUE = 4
#: Earth Engine's default per-project quotas (developers.google.com/earth-engine/guides/
#: usage): concurrent requests (either endpoint) and requests per second.
DEFAULT_CONCURRENT_REQUESTS = 40
DEFAULT_REQUESTS_PER_SECOND = 100.0
#: EEConfig fields that say how requests are made, not what is computed: left out of
#: :meth:`EEConfig.describe` so that resume signatures do not change with them.
TRANSPORT_FIELDS = ("high_volume", "endpoint", "max_concurrent_requests",
                    "requests_per_second", "worker_processes", "max_retries",
                    "max_request_bytes", "backoff_initial_s", "backoff_max_s",
                    "connect_timeout_s", "read_timeout_s")

#: DEM choice -> (asset id, band, whether the asset is an ImageCollection to mosaic).
DEMS: dict[str, tuple[str, str, bool]] = {
    "glo30": ("COPERNICUS/DEM/GLO30", "DEM", True),
    "aw3d30": ("JAXA/ALOS/AW3D30/V3_2", "DSM", True),
    "srtm": ("USGS/SRTMGL1_003", "elevation", False),
    "3dep10": ("USGS/3DEP/10m", "elevation", False),
}
COMPOSITES = ("median", "mean", "mosaic", "greenest", "barest")

#: Sentinel-2 collections, harmonized: Earth Engine removes the +1000 DN offset that
#: processing baseline 04.00 (from 25 January 2022) added, so that DN / 10000 is
#: reflectance in every year. L2A (surface reflectance, with the SCL band) and L1C (top
#: of atmosphere, no SCL).
L2A_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
L1C_COLLECTION = "COPERNICUS/S2_HARMONIZED"
#: The non-harmonized collections (refused) -> their harmonized replacement. Their DN of
#: 2022+ scenes carry the +1000 offset, so DN / 10000 would be 0.1 too bright there (and
#: a composite over a window across 25 January 2022 would mix both scales).
NON_HARMONIZED_COLLECTIONS: dict[str, str] = {
    "COPERNICUS/S2_SR": L2A_COLLECTION,
    "COPERNICUS/S2": L1C_COLLECTION,
}
#: How Earth Engine's public catalogue may also spell an asset id.
_PUBLIC_ASSET_PREFIX = "projects/earthengine-public/assets/"

#: Every band this source can compute, and the default selection.
AVAILABLE_BANDS: tuple[str, ...] = bandreg.SENTINEL2_BANDS + bandreg.TERRAIN_BANDS
DEFAULT_BANDS: tuple[str, ...] = (*bandreg.SENTINEL2_BANDS, "DEM", "slope", "aspect",
                                  "curvature")


def _catalogue_id(collection: str) -> str:
    """``collection`` without the public catalogue's ``projects/.../assets/`` prefix."""
    cid = str(collection).strip().strip("/")
    if cid.startswith(_PUBLIC_ASSET_PREFIX):
        cid = cid[len(_PUBLIC_ASSET_PREFIX):]
    return cid


def _check_collection(collection: str, cloud_mask: str) -> None:
    """Refuse a non-harmonized Sentinel-2 collection, and SCL masking of an L1C one.

    Raises:
        ConfigError: naming the collection and the one to use instead.
    """
    cid = _catalogue_id(collection)
    replacement = NON_HARMONIZED_COLLECTIONS.get(cid.upper())
    if replacement is not None:
        raise ConfigError(
            f"EEConfig.collection {collection!r} is not harmonized: from processing "
            f"baseline 04.00 (25 January 2022) its digital numbers carry a +1000 offset "
            f"that this source does not remove, so reflectances of 2022 and later would be "
            f"0.1 too high. Use collection={replacement!r} (the same scenes with the "
            f"offset removed).")
    if cid.upper() == L1C_COLLECTION and cloud_mask == "scl":
        raise ConfigError(
            f"EEConfig.collection {collection!r} is Level-1C, which has no SCL band for "
            f"cloud_mask='scl'. Use collection={L2A_COLLECTION!r} (surface reflectance, "
            f"with SCL), or cloud_mask='cloud_prob'.")


def _parse_date(value: str, what: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"EEConfig.{what} {value!r} is not an ISO date; write it like '2021-06-01'."
        ) from None


@dataclass(frozen=True)
class EEConfig:
    """What to compute in Earth Engine and how to talk to it.

    Attributes:
        start: First day of the compositing window (ISO date, inclusive).
        end: End of the window (ISO date, exclusive, as in ``filterDate``).
        collection: Sentinel-2 collection, harmonized: :data:`L2A_COLLECTION` (surface
            reflectance, the default) or :data:`L1C_COLLECTION` (top of atmosphere; with
            ``cloud_mask`` ``"cloud_prob"`` or ``"none"``, it has no SCL band). The
            non-harmonized ``COPERNICUS/S2_SR`` and ``COPERNICUS/S2`` are refused (see
            :data:`NON_HARMONIZED_COLLECTIONS`).
        cloud_mask: ``"scl"`` (mask scene-classification classes 0, 1, 3, 8, 9, 10, 11:
            no data, saturated or defective, cloud shadow, clouds, cirrus, snow; see
            :data:`~pipelines.sources.earthengine.expression.SCL_MASKED_CLASSES`),
            ``"cloud_prob"`` (join ``COPERNICUS/S2_CLOUD_PROBABILITY`` by ``system:index``
            and mask probabilities >= ``max_cloud_prob``) or ``"none"``.
        max_cloud_prob: Cloud probability (0-100) from which a pixel is masked.
        dem: ``"glo30"`` (Copernicus GLO-30), ``"aw3d30"`` (ALOS AW3D30),
            ``"srtm"`` (SRTM 1 arc-second) or ``"3dep10"`` (USGS 3DEP 10 m).
        composite: How the masked scenes are combined: ``median``, ``mean``, ``mosaic``
            (most recent valid pixel on top), ``greenest`` (each pixel's highest-NDVI
            scene, a vegetation baseline for a reference image) or ``barest`` (each
            pixel's lowest-NDVI scene: a scar at its freshest).
        bbox: Optional ``(minlon, minlat, maxlon, maxlat)``, in degrees (WGS 84), that
            limits the scenes considered (speeds up large windows; pixels are computed only
            where asked). A region that does not overlap it is refused before any work
            (:meth:`~pipelines.sources.earthengine.EarthEngineSource.check_covers`): it would
            read no scene.
        project: Cloud project billed for the requests (None: the credentials' project).
        high_volume: Use the high-volume endpoint (for many concurrent small requests).
        endpoint: Explicit API base URL; overrides ``high_volume``.
        max_concurrent_requests: computePixels requests in flight for the *whole job*
            (every worker process together), the project's concurrent-request quota
            (Earth Engine's default: 40); split over the job's worker processes (see
            :mod:`~pipelines.sources.earthengine.budget`).
        requests_per_second: Requests started per second by the whole job (Earth
            Engine's default per-project rate: 100/s), split the same way.
        worker_processes: Worker processes sharing the budget; None reads them from the
            Beam pipeline options (needed for runners that do not say).
        max_retries: Retries of a request answered 429/5xx, or failing to connect.
        max_request_bytes: Budget of one request (float32 values, 4 bytes each), at most
            Earth Engine's 48 MiB limit.
        backoff_initial_s: Delay before the first retry; doubles each retry (jittered).
        backoff_max_s: Longest delay between two retries.
        connect_timeout_s: Time to open a connection before the endpoint counts as
            unreachable.
        read_timeout_s: Time to wait for an answer (computations can take minutes).
    """

    start: str
    end: str
    collection: str = "COPERNICUS/S2_SR_HARMONIZED"
    cloud_mask: Literal["scl", "cloud_prob", "none"] = "scl"
    max_cloud_prob: int = 40
    dem: Literal["glo30", "aw3d30", "srtm", "3dep10"] = "glo30"
    composite: str = "median"
    bbox: tuple[float, float, float, float] | None = None
    project: str | None = None
    high_volume: bool = False
    endpoint: str | None = None
    max_concurrent_requests: int = DEFAULT_CONCURRENT_REQUESTS
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    worker_processes: int | None = None
    max_retries: int = 6
    max_request_bytes: int = DEFAULT_REQUEST_BYTES
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 64.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        start, end = _parse_date(self.start, "start"), _parse_date(self.end, "end")
        if end <= start:
            raise ConfigError(
                f"Empty Earth Engine date window: end {self.end!r} is not after start "
                f"{self.start!r} (the end is exclusive). Give an end date after the start."
            )
        if self.cloud_mask not in ("scl", "cloud_prob", "none"):
            raise ConfigError(f"Unknown cloud_mask {self.cloud_mask!r}; use 'scl', "
                              f"'cloud_prob' or 'none'.")
        _check_collection(self.collection, self.cloud_mask)
        if not 0 <= self.max_cloud_prob <= 100:
            raise ConfigError(f"max_cloud_prob must be within 0-100, got {self.max_cloud_prob}.")
        if self.dem not in DEMS:
            raise ConfigError(f"Unknown dem {self.dem!r}; use one of {', '.join(DEMS)}.")
        if self.composite not in COMPOSITES:
            raise ConfigError(f"Unknown composite {self.composite!r}; use one of "
                              f"{', '.join(COMPOSITES)}.")
        if self.bbox is not None:
            if len(self.bbox) != 4 or not (self.bbox[0] < self.bbox[2]
                                           and self.bbox[1] < self.bbox[3]):
                raise ConfigError(f"bbox {self.bbox!r} must be (minlon, minlat, maxlon, maxlat) "
                                  f"with min < max.")
            object.__setattr__(self, "bbox", tuple(float(v) for v in self.bbox))
            minlon, minlat, maxlon, maxlat = self.bbox
            if not (minlon >= -180 and maxlon <= 180 and minlat >= -90 and maxlat <= 90):
                raise ConfigError(
                    f"bbox {self.bbox!r} is outside longitude/latitude ranges: give "
                    f"(minlon, minlat, maxlon, maxlat) in degrees (WGS 84), not projected "
                    f"coordinates, with longitude first.")
        if isinstance(self.max_concurrent_requests, bool) or not (
                isinstance(self.max_concurrent_requests, int)
                and self.max_concurrent_requests >= 1):
            raise ConfigError(f"max_concurrent_requests must be a whole number >= 1 (the "
                              f"project's Earth Engine concurrent-request quota, default "
                              f"{DEFAULT_CONCURRENT_REQUESTS}), got "
                              f"{self.max_concurrent_requests!r}.")
        if not (self.requests_per_second > 0 and math.isfinite(self.requests_per_second)):
            raise ConfigError(f"requests_per_second must be a number > 0 (Earth Engine's "
                              f"default quota: {DEFAULT_REQUESTS_PER_SECOND:g}/s), got "
                              f"{self.requests_per_second!r}.")
        if self.worker_processes is not None and not (
                isinstance(self.worker_processes, int) and self.worker_processes >= 1):
            raise ConfigError(f"worker_processes must be a whole number >= 1 (or unset to "
                              f"read it from the pipeline options), got "
                              f"{self.worker_processes!r}.")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}.")
        if not BYTES_PER_VALUE <= self.max_request_bytes <= EE_REQUEST_LIMIT:
            raise ConfigError(
                f"max_request_bytes must be within {BYTES_PER_VALUE}-{EE_REQUEST_LIMIT} "
                f"(Earth Engine's 48 MiB limit), got {self.max_request_bytes}."
            )
        for name in ("backoff_initial_s", "backoff_max_s", "connect_timeout_s",
                     "read_timeout_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")

    @property
    def url(self) -> str:
        """The API base URL requests go to."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return HIGH_VOLUME_ENDPOINT if self.high_volume else DEFAULT_ENDPOINT

    def to_dict(self) -> dict:
        """The configuration as plain JSON-ready data (``bbox`` as a list)."""
        d = asdict(self)
        d["bbox"] = list(self.bbox) if self.bbox else None
        return d

    def describe(self) -> dict:
        """What is computed (:meth:`to_dict` without :data:`TRANSPORT_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in TRANSPORT_FIELDS}
