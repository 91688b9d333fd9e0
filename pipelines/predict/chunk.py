"""One chunk of a sweep, from its done-record or imagery to its COGs and polygons.

Owns the per-chunk steps as plain functions of the frozen :class:`SweepPlan` and the
chunk's values, with resources (the opened sources) passed in, so a unit test calls them
without Beam:

* :func:`prepare_chunk`: skip a chunk whose done-record matches this run's inputs, or read
  it plus a halo and find its lattice windows (:class:`ChunkTiles`);
* :func:`finish_chunk`: blend the windows' probabilities, crop the halo, threshold, write
  ``prob/<key>.tif`` and ``mask/<key>.tif`` (and, with ``explain``, the blended Grad-CAM
  ``explain/<key>.tif``), then ``done/<key>.json`` (with the chunk's polygons) last;
* :func:`failure_record`: the dead-letter record of a chunk that failed at some stage.

Output encoding: probabilities are ``uint8`` by default (``p * 250`` rounded, 255 nodata,
with GDAL band scale 0.004 and offset 0, so GDAL and QGIS read probabilities; a pixel next
to the threshold is moved by one code where rounding would put it on the other side of
the threshold than the mask, see :func:`quantize_prob`): 4x smaller
than ``float32`` at continental scale, and a step of 0.004 is far below any model's
calibration error; ``prob_dtype="float32"`` keeps full precision (NaN nodata).
Masks are ``uint8`` 0/1 with 255 nodata.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import fsio, termination
from pipelines.errors import PERMANENT, failure_class, worth_retrying
from pipelines.geo.blend import blend, chunk_windows, cut_windows
from pipelines.geo.grid import Chunk, ChunkKey, GridSpec, PixelGrid
from pipelines.geo.patches import channels_last
from pipelines.predict.config import FORMAT, MASK_BAND, NODATA_U8, PROB_BAND, PROB_SCALE, SweepJob
from pipelines.predict.plan import SweepPlan, chunk_signature
from pipelines.sources.base import Raster, Source

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ChunkTiles:
    """A chunk ready for inference: its image, where its windows lie, what blending needs.

    The image is carried once and the windows are cut from it where the model takes
    them (:meth:`windows`): the windows overlap (with the default stride each pixel lies
    in four), so carrying them cut would carry every pixel several times, and every copy
    a runner encodes (or pickles to estimate an element's size) would pay for it.
    :meth:`without_pixels` is what is kept once the windows are predicted.

    Attributes:
        job: Index of the chunk's job in the plan.
        key: The chunk key.
        spec: The chunk's grid spec (:meth:`GridSpec.to_dict`).
        region_wkb: The part of the AOI inside the chunk.
        signature: The chunk's resume signature.
        origins: Window origins in the halo'd read grid, ``(n, 2)``.
        valid: Pixels of the chunk with valid imagery inside the region.
        size: The windows' side in pixels.
        image: The halo'd read grid's pixels, ``(H, W, c)`` float32 channels-last (as
            :func:`~pipelines.geo.patches.channels_last` fills them); ``None`` once the
            windows are predicted.
    """

    job: int
    key: str
    spec: dict
    region_wkb: bytes
    signature: str
    origins: np.ndarray
    valid: np.ndarray
    size: int
    image: np.ndarray | None = field(default=None, repr=False)

    def windows(self) -> np.ndarray:
        """The windows at :attr:`origins`, ``(n, size, size, c)``: a new array each call.

        Raises:
            ValueError: the pixels were dropped (:meth:`without_pixels`).
        """
        if self.image is None:
            raise ValueError(f"Chunk {self.key} holds no pixels (already predicted?).")
        return cut_windows(self.image, self.origins, self.size)

    @property
    def windows_nbytes(self) -> int:
        """Bytes of :meth:`windows`, without cutting them (0 without pixels)."""
        if self.image is None:
            return 0
        return (len(self.origins) * self.size * self.size * self.image.shape[2]
                * self.image.itemsize)

    def without_pixels(self) -> ChunkTiles:
        """A copy without the image: what blending and writing need."""
        return dataclasses.replace(self, image=None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _size(path: str) -> int | None:
    """Size in bytes of a file or object, ``None`` when it does not exist."""
    if fsio.is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        try:  # the object itself: its name is not a pattern
            return int(FileSystems.get_filesystem(path).metadata(path).size_in_bytes)
        except Exception:  # Beam raises BeamIOError for a missing object
            return None
    import os

    try:
        return os.path.getsize(path)
    except OSError:
        return None


def load_done(job: SweepJob, key: str) -> dict | None:
    """A chunk's done-record, ``None`` when absent or when a file it names changed."""
    path = job.path("done", f"{key}.json")
    rec = fsio.read_record(path)
    if rec is None:
        return None
    sizes = rec.get("sizes", {})
    for name, rel in rec.get("files", {}).items():
        size = _size(job.path(rel))
        if size is None or size != sizes.get(name):
            log.warning("Done-record %s names %s, which is missing or not the file it "
                        "wrote (%s bytes, expected %s); redoing the chunk", path, rel, size,
                        sizes.get(name))
            return None
    return rec


def read_chunk(source: Source, grid: PixelGrid, bands: Sequence[str], retries: int,
               retry_delay_s: float) -> Raster:
    """Read ``grid`` from ``source``, retrying transient errors with exponential backoff.

    Only failures :func:`~pipelines.errors.worth_retrying` are retried: a corrupt file or a
    refused request fails at once, and a source that spent its own retry budget (Earth
    Engine) is not retried again.
    """
    from apache_beam.utils import retry

    def note(fmt: str, *args: Any) -> None:
        log.info("retrying a chunk read after %s s: %s", args[0] if args else "?",
                 args[2].strip() if len(args) > 2 else "")

    read = retry.with_exponential_backoff(
        num_retries=retries, initial_delay_secs=retry_delay_s,
        retry_filter=worth_retrying, logger=note)(source.read)
    return read(grid, bands)


def chunk_record(chunk: Chunk, sig: str, state: str, valid: np.ndarray, files: dict | None,
                 polygons: list[dict], positive: int = 0) -> dict:
    """The body of a chunk's done-record."""
    return {"format": FORMAT, "key": str(chunk.key), "signature": sig, "state": state,
            "epsg": chunk.key.epsg, "grid": chunk.grid.to_dict(),
            "valid_px": int(valid.sum()), "positive_px": positive,
            "files": files or {}, "polygons": polygons}


def prepare_chunk(plan: SweepPlan, sources: Sequence[Source], job_i: int, key: str,
                  region_wkb: bytes, spec_d: dict) -> ChunkTiles | dict:
    """Skip (returns the done-record) or read a chunk and find its windows.

    Args:
        plan: The sweep's plan.
        sources: The plan's sources, opened (a job's source is ``sources[job.source]``).
        job_i: Index of the chunk's job.
        key: The chunk key.
        region_wkb: The part of the AOI inside the chunk.
        spec_d: The chunk's grid spec.

    Returns:
        A record dict for a skipped chunk or one without valid imagery (its done-record
        is written here), else :class:`ChunkTiles` for inference.
    """
    # abandoned when a SIGTERM came before it started; finished when it came during
    with termination.in_flight(f"chunk {key} of {plan.jobs[job_i].label} (read)"):
        return _prepare_chunk(plan, sources, job_i, key, region_wkb, spec_d)


def _prepare_chunk(plan: SweepPlan, sources: Sequence[Source], job_i: int, key: str,
                   region_wkb: bytes, spec_d: dict) -> ChunkTiles | dict:
    job = plan.jobs[job_i]
    sig = chunk_signature(job, key, region_wkb)
    done = load_done(job, key)
    if done is not None and done.get("signature") == sig:
        return {**done, "action": "skipped"}
    chunk = Chunk(ChunkKey.parse(key), GridSpec(**spec_d), region_wkb)
    raster = read_chunk(sources[job.source], chunk.read_grid, plan.bands,
                        plan.config.retries, plan.config.retry_delay_s)
    h = plan.halo
    inner = (slice(h, h + chunk.grid.height), slice(h, h + chunk.grid.width))
    valid = raster.valid[inner] & chunk.region_mask()
    if not valid.any():
        rec = chunk_record(chunk, sig, "empty", valid, None, [])
        fsio.write_json(job.path("done", f"{key}.json"), rec)
        return {**rec, "action": "computed"}
    origins = chunk_windows(plan.lattice, chunk.read_grid, h, needed=valid)
    # one channels-last copy (never the source's array), invalid pixels filled exactly
    # as export fills them for training (the one nodata policy: channels_last)
    image = channels_last(raster.data, raster.valid)
    return ChunkTiles(job_i, key, spec_d, region_wkb, sig, origins, valid,
                      plan.lattice.window, image)


def blend_chunk(plan: SweepPlan, tiles: ChunkTiles, probs: np.ndarray,
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chunk's blended probability, valid pixels and mask.

    Args:
        plan: The sweep's plan.
        tiles: The chunk.
        probs: The windows' probabilities, ``(n, h, w)``.
        shape: The chunk grid's shape (without the halo).

    Returns:
        ``(prob, valid, mask)``: float probability with NaN where not valid, the pixels
        with valid imagery inside the region and a finite blend, and ``prob >= threshold``
        on them.
    """
    prob = blend(probs, tiles.origins, plan.weight, plan.halo, shape)
    valid = tiles.valid & np.isfinite(prob)
    prob[~valid] = np.nan
    mask = valid & (prob >= plan.threshold)
    return prob, valid, mask


def threshold_codes(threshold: float) -> tuple[int, int]:
    """The ``uint8`` codes on either side of ``threshold``, as a reader of the COG sees them.

    A reader applies the band scale (``code * 1 / PROB_SCALE`` in float64, as GDAL does)
    and compares with the published threshold; these are the codes it reads below and at
    or above it.

    Returns:
        ``(below, above)``: the largest code whose scaled value is ``< threshold`` (-1
        when none is) and the smallest whose scaled value is ``>= threshold``
        (``PROB_SCALE + 1`` when none is).
    """
    scale = 1.0 / PROB_SCALE
    codes = np.arange(int(PROB_SCALE) + 1, dtype=np.float64)
    at_or_above = codes * scale >= float(threshold)
    above = int(np.argmax(at_or_above)) if at_or_above.any() else int(PROB_SCALE) + 1
    return above - 1, above


def quantize_prob(prob: np.ndarray, valid: np.ndarray, mask: np.ndarray,
                  threshold: float) -> np.ndarray:
    """The ``uint8`` probability codes of a chunk, consistent with its mask at ``threshold``.

    Codes are ``p * PROB_SCALE`` rounded, 255 (nodata) off ``valid``; a pixel of ``mask``
    (thresholded on the float probability) is stored at least at the smallest code that
    reads ``>= threshold`` with the COG's scale, any other valid pixel at most at the
    largest code that reads below it. So a reader thresholding the COG at the published
    threshold gets the mask, and no code moves by more than one step.

    Args:
        prob: Float probabilities (NaN where not valid).
        valid: Pixels with a probability.
        mask: ``prob >= threshold`` on ``valid`` (the mask as written).
        threshold: The mask threshold.

    Returns:
        ``uint8`` codes, ``prob``'s shape.
    """
    below, above = threshold_codes(threshold)
    q = np.rint(np.clip(np.where(valid, prob, 0.0), 0.0, 1.0) * PROB_SCALE)
    top = int(PROB_SCALE)
    q = np.where(mask, np.maximum(q, min(above, top)), np.minimum(q, max(below, 0)))
    return np.where(valid, q, NODATA_U8).astype(np.uint8)


def chunk_tags(plan: SweepPlan, job: SweepJob, key: str, sig: str) -> dict[str, str]:
    """The metadata tags of a chunk's COGs."""
    return {"model_id": str(plan.meta["model_id"]), "threshold": repr(plan.threshold),
            "start": job.start or "", "end": job.end or "", "chunk": key,
            "signature": sig, "window": str(plan.lattice.window),
            "stride": str(plan.lattice.stride), "generator": f"landslides predict {FORMAT}"}


def finish_chunk(plan: SweepPlan, tiles: ChunkTiles, probs: np.ndarray) -> dict:
    """Blend, write the chunk's COGs and done-record; returns the record.

    Args:
        plan: The sweep's plan.
        tiles: The chunk, as :func:`prepare_chunk` returned it (its pixels unused: it
            may be :meth:`ChunkTiles.without_pixels`).
        probs: The windows' probabilities, ``(n, h, w)``; with ``explain``,
            ``(n, h, w, 2)``: the probabilities and the windows' Grad-CAM maps.
    """
    # the COGs, then the done-record: once started it runs to its end, even after SIGTERM
    with termination.in_flight(f"chunk {tiles.key} of {plan.jobs[tiles.job].label} (write)"):
        return _finish_chunk(plan, tiles, probs)


def _finish_chunk(plan: SweepPlan, tiles: ChunkTiles, probs: np.ndarray) -> dict:
    from pipelines.geo.cog import CATEGORICAL, CONTINUOUS, CogProfile, write_cog

    job = plan.jobs[tiles.job]
    chunk = Chunk(ChunkKey.parse(tiles.key), GridSpec(**tiles.spec), tiles.region_wkb)
    grid = chunk.grid
    cams = None
    if probs.ndim == 4:  # with --explain: the probabilities and the windows' Grad-CAM
        probs, cams = probs[..., 0], probs[..., 1]
    prob, valid, mask = blend_chunk(plan, tiles, probs, grid.shape)
    tags = chunk_tags(plan, job, tiles.key, tiles.signature)
    scales: list[float] | None = None
    prob_tags = {**tags, "units": "probability"}
    if plan.config.prob_dtype == "uint8":
        prob_px, prob_nodata = quantize_prob(prob, valid, mask, plan.threshold), float(NODATA_U8)
        prob_profile = CogProfile(predictor=2)
        # GDAL's band scale/offset: GDAL and QGIS read probabilities, not raw bytes; the
        # tag stays for readers of COGs written before the band scale was set
        scales = [1.0 / PROB_SCALE]
        prob_tags["scale"] = repr(1.0 / PROB_SCALE)
    else:
        prob_px, prob_nodata = prob.astype(np.float32), float("nan")
        prob_profile = dataclasses.replace(CONTINUOUS, predictor=3)
    mask_px = np.where(valid, mask, NODATA_U8).astype(np.uint8)
    files = {"prob": f"prob/{tiles.key}.tif", "mask": f"mask/{tiles.key}.tif"}
    write_cog(job.path(files["prob"]), prob_px, grid, nodata=prob_nodata,
              band_names=[PROB_BAND], profile=prob_profile,
              tags=prob_tags, scales=scales,
              offsets=[0.0] if scales else None)
    write_cog(job.path(files["mask"]), mask_px, grid, nodata=float(NODATA_U8),
              band_names=[MASK_BAND], profile=CATEGORICAL,
              tags={**tags, "legend": "0=no landslide,1=landslide"})
    if cams is not None:
        heat = blend(cams, tiles.origins, plan.weight, plan.halo, grid.shape)
        heat[~valid] = np.nan
        files["explain"] = f"explain/{tiles.key}.tif"
        write_cog(job.path(files["explain"]), heat.astype(np.float32), grid,
                  nodata=float("nan"), band_names=["gradcam"],
                  profile=dataclasses.replace(CONTINUOUS, predictor=3),
                  tags={**tags, "layer": str(plan.meta.get("explain_layer")),
                        "units": "Grad-CAM of the landslide probability summed over each "
                                 "window's predicted pixels (raw)"})
    polygons = chunk_polygons(grid, mask, prob, valid, plan.config.connectivity,
                              plan.config.min_area_m2)
    rec = chunk_record(chunk, tiles.signature, "done", valid, files, polygons,
                       positive=int(mask.sum()))
    rec["sizes"] = {name: _size(job.path(rel)) for name, rel in files.items()}
    fsio.write_json(job.path("done", f"{tiles.key}.json"), rec)  # last: "complete"
    return {**rec, "action": "computed"}


#: Pieces within this many pixels of their UTM zone's limit may continue in the next zone
#: (as :func:`pipelines.geo.mosaic.near_zone_limit` holds them back for the zone merge).
ZONE_LIMIT_PX = 2.0


def zone_limit(grid: PixelGrid) -> BaseGeometry | None:
    """The limits of the chunk's UTM zone within reach of its pixels, in its CRS.

    The zone's meridians (and the equator or the UTM latitude limits), as
    :func:`pipelines.geo.mosaic.merge_across_zones` sees them.

    Returns:
        A lineal geometry, or ``None`` when the chunk's CRS is not a UTM zone or no limit
        lies within :data:`ZONE_LIMIT_PX` pixels of the chunk.
    """
    import shapely
    from pyproj import CRS
    from shapely.geometry import box

    from pipelines.geo.grid import WGS84, to_crs
    from pipelines.geo.mosaic import zone_edges

    epsg = CRS.from_user_input(grid.crs).to_epsg()
    if epsg is None or not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        return None
    footprint = box(*grid.bounds)
    edges = zone_edges(epsg, to_crs(footprint, grid.crs, WGS84).bounds)
    if not shapely.dwithin(footprint, edges, ZONE_LIMIT_PX * grid.res):
        return None
    return edges


def chunk_polygons(grid: PixelGrid, mask: np.ndarray, prob: np.ndarray, valid: np.ndarray,
                   connectivity: int, min_area_m2: float) -> list[dict]:
    """The chunk's landslide polygons, as done-record entries.

    Polygons below ``min_area_m2`` are dropped unless they touch the chunk's edge or lie
    within :data:`ZONE_LIMIT_PX` pixels of its UTM zone's limit: their other parts may lie
    in the next chunk or the next zone, and the inventory merges them (across chunk
    edges, then across zone limits) and filters the whole landslide.
    """
    import shapely

    from pipelines.geo.inventory.vector import polygonize

    if not mask.any():
        return []
    limit = zone_limit(grid) if min_area_m2 > 0 else None
    mask = drop_small(mask, grid, connectivity, min_area_m2, limit)
    if not mask.any():
        return []
    cols = polygonize(mask, grid, min_area_m2=0.0, probability=prob,
                      connectivity=connectivity, valid=valid)
    left, bottom, right, top = grid.bounds
    tol = grid.res / 2.0
    out = []
    for geom, area, npx, pmean, pmax in zip(cols["geometry"], cols["area_m2"],
                                            cols["n_pixels"], cols["prob_mean"],
                                            cols["prob_max"]):
        x0, y0, x1, y1 = geom.bounds
        edge = bool(x0 <= left + tol or y0 <= bottom + tol or x1 >= right - tol
                    or y1 >= top - tol)
        if area < min_area_m2 and not edge and not (
                limit is not None and shapely.dwithin(geom, limit, ZONE_LIMIT_PX * grid.res)):
            continue  # small ones on chunk edges or zone limits wait for their other parts
        out.append({"wkb": _b64(geom.wkb), "area_m2": float(area), "n_pixels": int(npx),
                    "prob_mean": float(pmean), "prob_max": float(pmax), "edge": edge})
    return out


def drop_small(mask: np.ndarray, grid: PixelGrid, connectivity: int,
               min_area_m2: float, limit: BaseGeometry | None = None) -> np.ndarray:
    """Clear regions below the minimum area that touch neither the chunk's border nor ``limit``.

    Their area is final, so noisy masks are not polygonised pixel by pixel.

    Args:
        mask: The chunk's mask.
        grid: The chunk's grid.
        connectivity: 4 or 8.
        min_area_m2: The minimum area.
        limit: The chunk's UTM zone limit (:func:`zone_limit`), or ``None``: regions with
            a pixel within :data:`ZONE_LIMIT_PX` pixels of it are kept (their other part
            may lie in the next zone).
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    keep = np.bincount(lab.ravel(), minlength=n + 1) * grid.res ** 2 >= min_area_m2
    keep[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    if limit is not None:
        keep[_near_limit(lab, keep, grid, limit)] = True
    keep[0] = False
    return keep[lab]


def _near_limit(lab: np.ndarray, keep: np.ndarray, grid: PixelGrid,
                limit: BaseGeometry) -> np.ndarray:
    """The labels not yet kept with a pixel within :data:`ZONE_LIMIT_PX` pixels of ``limit``.

    A pixel square lies that near when its centre lies within that distance plus half its
    diagonal (a few more pixels than the polygons' test in :func:`chunk_polygons`).
    """
    import shapely

    rows, cols = np.nonzero((lab > 0) & ~keep[lab])
    if not len(rows):
        return np.zeros(0, dtype=lab.dtype)
    a, b, c, d, e, f = grid.transform
    x = c + a * (cols + 0.5) + b * (rows + 0.5)
    y = f + d * (cols + 0.5) + e * (rows + 0.5)
    reach = (ZONE_LIMIT_PX + np.sqrt(0.5)) * grid.res
    near = shapely.dwithin(shapely.points(x, y), limit, reach)
    return np.unique(lab[rows[near], cols[near]])


def failure_record(plan: SweepPlan, job_i: int, key: str, stage: str,
                   exc: BaseException | str, reason: str | None = None) -> dict:
    """A dead-letter record: which chunk, at which stage, and why.

    Args:
        plan: The sweep's plan.
        job_i: Index of the chunk's job.
        key: The chunk key.
        stage: ``read``, ``inference`` or ``write``.
        exc: The error, or its text.
        reason: The error's class name (default: taken from ``exc``).
    """
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    if reason is None:
        reason = type(exc).__name__ if not isinstance(exc, str) else text.split(":", 1)[0]
    rec: dict[str, Any] = {"aoi": plan.jobs[job_i].label, "chunk": key, "stage": stage,
                           "error": text, "reason": reason,
                           "class": PERMANENT if isinstance(exc, str) else failure_class(exc)}
    if stage == "read":
        rec["retries"] = plan.config.retries
    return rec


__all__ = [
    "ZONE_LIMIT_PX",
    "ChunkTiles",
    "blend_chunk",
    "chunk_polygons",
    "chunk_record",
    "chunk_tags",
    "drop_small",
    "failure_record",
    "finish_chunk",
    "load_done",
    "prepare_chunk",
    "quantize_prob",
    "read_chunk",
    "threshold_codes",
    "zone_limit",
]
