"""Pure patch logic shared by export and import: cut, select, split, summarise.

No Beam here: the export PTransforms only wire these functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from pipelines.errors import ConfigError
from pipelines.geo import bands as bandreg
from pipelines.geo.grid import WGS84, Chunk, ChunkKey, PixelGrid, patch_windows, to_crs

SPLITS = ("train", "val", "test")
#: Label value of pixels without a usable label: no valid imagery, or ignored by the label
#: source (e.g. an unlabelled label-raster pixel). Never scored by losses and metrics.
IGNORE = 255
#: The one nodata policy of model inputs, in export and predict alike (see
#: :func:`channels_last`): invalid or non-finite pixels are 0 in every channel (physical
#: units) and their labels are :data:`IGNORE`. Recorded in sweep signatures.
NODATA_POLICY = "zero-fill"


def stable_unit(*parts: object) -> float:
    """A deterministic pseudo-random number in [0, 1) from ``parts`` (no global RNG)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


# --------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class SplitPlan:
    """Spatially blocked split: blocks of ``block`` x ``block`` chunks go to one split.

    Attributes:
        fractions: Target fractions for train/val/test (sum to 1).
        block: Block side in chunks (patches in a block, and so neighbouring chunks, share a
            split, which keeps spatially autocorrelated patches out of different splits).
        seed: Seed of the deterministic assignment.
        polygons: Optional explicit split areas ``{split: WKB in WGS84}``; a chunk whose
            centre lies in one goes to that split, others to train.
    """

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    block: int = 2
    seed: int = 0
    polygons: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
            raise ConfigError(f"Split fractions must be three values >= 0, got {self.fractions}.")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ConfigError(f"Split fractions {self.fractions} must sum to 1.")
        if self.block < 1:
            raise ConfigError(f"Split block must be >= 1 chunk, got {self.block}.")
        unknown = set(self.polygons) - set(SPLITS)
        if unknown:
            raise ConfigError(f"Unknown split names {sorted(unknown)}; use {SPLITS}.")

    def block_of(self, key: ChunkKey) -> tuple[int, int, int]:
        return (key.epsg, key.row // self.block, key.col // self.block)

    def assign(self, chunks: Sequence[Chunk]) -> dict[ChunkKey, str]:
        """Assign every chunk to a split, deterministically for a seed.

        Blocks are ordered by a seeded hash and filled in that order until each split's
        share of *chunks* reaches its fraction, so small regions still get every split
        with a non-zero fraction when they have enough blocks.
        """
        out: dict[ChunkKey, str] = {}
        rest = list(chunks)
        if self.polygons:
            from pipelines.geo.grid import WGS84, to_crs

            geoms = {s: shapely.from_wkb(w) for s, w in self.polygons.items()}
            rest = []
            for c in chunks:
                centre = shapely.box(*c.grid.bounds).centroid
                centre_ll = to_crs(centre, c.grid.crs, WGS84, densify_deg=0)
                hit = next((s for s, g in geoms.items() if g.contains(centre_ll)), None)
                out[c.key] = hit or "train"
            return out
        blocks: dict[tuple[int, int, int], list[ChunkKey]] = {}
        for c in rest:
            blocks.setdefault(self.block_of(c.key), []).append(c.key)
        order = sorted(blocks, key=lambda b: stable_unit("split", self.seed, *b))
        total = len(rest)
        targets = [f * total for f in self.fractions]
        taken = [0.0, 0.0, 0.0]
        for b in order:
            # the split furthest below its target takes the block
            deficits = [t - k if t > 0 else -np.inf for t, k in zip(targets, taken)]
            i = int(np.argmax(deficits))
            for key in blocks[b]:
                out[key] = SPLITS[i]
            taken[i] += len(blocks[b])
        return out


def buffer_splits(chunks: Sequence[Chunk], splits: Mapping[ChunkKey, str], buffer_px: int
                  ) -> list[Chunk]:
    """Shrink every chunk's region away from neighbouring chunks of another split.

    Patches of neighbouring blocks of different splits otherwise touch, and spatially
    autocorrelated pixels (the same landslide, the same slope) leak from training into
    validation or test. Each chunk loses a strip ``buffer_px`` wide along every edge and
    corner it shares with a chunk of another split, so two splits are ``2 * buffer_px``
    apart; a chunk left with no region is dropped.

    A region across UTM zones has chunks of two grids that meet at the zone edge. Their
    boxes overlap there (the grids are not aligned) but the parts of the region they hold
    do not, so a chunk keeps ``buffer_px`` away from the regions of the other zone's chunks
    of another split, reprojected into its own CRS.

    Args:
        chunks: The planned chunks.
        splits: Each chunk's split (from :meth:`SplitPlan.assign`).
        buffer_px: Half the gap between two splits, in pixels (0: no change).
    """
    if buffer_px <= 0:
        return list(chunks)
    across = _across_zones(chunks, splits, buffer_px)
    out: list[Chunk] = []
    for c in chunks:
        k = c.key
        width = buffer_px * float(c.spec.pixel_size)
        others = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                n = ChunkKey(k.epsg, k.row + dr, k.col + dc)
                if (dr or dc) and n in splits and splits[n] != splits[k]:
                    others.append(c.spec.chunk_box(n))
        if not others and k not in across:
            out.append(c)
            continue
        # square corners around the grid's boxes; round ones (the exact distance) around
        # the other zone's regions, whose acute corners a mitre would stretch far out
        zones = [shapely.union_all(others).buffer(width, join_style="mitre")] if others else []
        if k in across:
            zones.append(shapely.union_all(across[k]).buffer(width))
        region = c.region.difference(shapely.union_all(zones))
        if region.is_empty or region.area <= 0:
            continue
        out.append(Chunk(c.key, c.spec, shapely.to_wkb(region)))
    return out


def _across_zones(chunks: Sequence[Chunk], splits: Mapping[ChunkKey, str], buffer_px: int
                  ) -> dict[ChunkKey, list[BaseGeometry]]:
    """Per chunk, the regions of nearby chunks of another CRS and another split.

    Each region is reprojected into the CRS of the chunk it is listed for. Candidates are
    found on the regions' WGS 84 outlines with a generous margin, then kept when they lie
    within ``buffer_px`` pixels of the chunk's box in its own CRS.
    """
    epsgs = sorted({c.key.epsg for c in chunks})
    if len(epsgs) < 2:
        return {}
    outlines = np.empty(len(chunks), dtype=object)
    for epsg in epsgs:  # one transformer per CRS, every region of it at once
        index = [i for i, c in enumerate(chunks) if c.key.epsg == epsg]
        to_wgs84 = Transformer.from_crs(f"EPSG:{epsg}", WGS84, always_xy=True)
        outlines[index] = shapely.transform(
            np.array([chunks[i].region for i in index], dtype=object),
            lambda xy, t=to_wgs84: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    tree = shapely.STRtree(outlines)
    out: dict[ChunkKey, list[BaseGeometry]] = {}
    for i, c in enumerate(chunks):
        width = buffer_px * float(c.spec.pixel_size)
        x0, y0, x1, y1 = outlines[i].bounds
        # degrees that surely span ``width`` metres here (twice the local metres/degree)
        cos_lat = max(math.cos(math.radians(min(max(abs(y0), abs(y1)), 89.0))), 0.01)
        margin = 2.0 * width / (110_000.0 * cos_lat)
        own_box = c.spec.chunk_box(c.key)
        for j in tree.query(shapely.box(x0 - margin, y0 - margin, x1 + margin, y1 + margin)):
            n = chunks[int(j)]
            if n.key.epsg == c.key.epsg or splits.get(n.key) == splits.get(c.key):
                continue
            region = to_crs(n.region, n.spec.crs, c.spec.crs)
            if shapely.dwithin(region, own_box, width):
                out.setdefault(c.key, []).append(region)
    return out


# --------------------------------------------------------------------------- patches
@dataclass(frozen=True)
class PatchRules:
    """Which patches to keep.

    Attributes:
        size: Patch side in pixels (64, 128 or 256).
        stride: Step between patches (``None``: ``size``, no overlap).
        negative_fraction: Fraction of patches without landslide pixels that are kept
            (0 drops them all, as in studies that delete zero-valued patches; 1 keeps all).
            The choice per patch is a seeded hash of its key, so reruns keep the same ones.
        max_nodata_fraction: Patches with more invalid pixels than this are dropped.
        seed: Seed of the negative selection.
    """

    size: int = 128
    stride: int | None = None
    negative_fraction: float = 0.25
    max_nodata_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size not in (32, 64, 128, 256):
            raise ConfigError(f"Patch size must be 64, 128 or 256 (32 for tests), got {self.size}.")
        if self.stride is not None and not 0 < self.stride <= self.size:
            raise ConfigError(f"Stride must be in 1..{self.size}, got {self.stride}.")
        if not 0.0 <= self.negative_fraction <= 1.0:
            raise ConfigError(f"negative_fraction must be in [0, 1], got {self.negative_fraction}.")
        if not 0.0 <= self.max_nodata_fraction <= 1.0:
            raise ConfigError(
                f"max_nodata_fraction must be in [0, 1], got {self.max_nodata_fraction}."
            )


@dataclass(frozen=True)
class CutPatch:
    """One selected patch: pixels, labels and where it lies."""

    key: str
    image: np.ndarray  # (h, w, c) float32, invalid and non-finite pixels 0 (may be a view)
    mask: np.ndarray  # (h, w) uint8, IGNORE where invalid
    grid: PixelGrid
    positive: bool
    row: int = 0  # offset of the patch in its chunk
    col: int = 0


def channels_last(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(bands, h, w)`` -> one contiguous ``(h, w, bands)`` float32 copy, 0 where invalid.

    Done once per chunk: patches are views into it, so cutting costs one pass over the
    chunk instead of a transpose, a copy and two masked writes per patch.
    """
    # always a copy: for one band the transposed view is already contiguous, and
    # ascontiguousarray would hand back a view whose zeroing below would reach ``data``
    hwc = np.array(np.moveaxis(data, 0, -1), dtype=np.float32, order="C", copy=True)
    if not valid.all():
        hwc[~valid] = 0.0
    if not np.isfinite(hwc).all():  # sources keep NaN to invalid pixels; be safe anyway
        np.nan_to_num(hwc, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return hwc


def kept_pixels(patches: Sequence[CutPatch], valid: np.ndarray) -> np.ndarray:
    """``(h, w)`` bool: valid pixels inside at least one of ``patches`` (of one chunk)."""
    kept = np.zeros(valid.shape, dtype=bool)
    for p in patches:
        h, w = p.mask.shape
        kept[p.row:p.row + h, p.col:p.col + w] = True
    kept &= valid
    return kept


@dataclass
class CutStats:
    """Counts from cutting one chunk (feeds Beam counters and the manifest).

    Attributes:
        candidates: Patch windows looked at.
        kept_positive: Kept patches with a labelled landslide pixel.
        kept_negative: Kept patches without one.
        dropped_nodata: Patches with too many invalid pixels.
        dropped_negative: Negative patches left out by ``negative_fraction``.
        dropped_unlabelled: Patches whose valid pixels are all labelled ignore (255), e.g.
            unlabelled areas of a label raster (never for vector inventories).
    """

    candidates: int = 0
    kept_positive: int = 0
    kept_negative: int = 0
    dropped_nodata: int = 0
    dropped_negative: int = 0
    dropped_unlabelled: int = 0


def cut_patches(
    chunk_key: ChunkKey,
    data: np.ndarray,
    valid: np.ndarray,
    mask: np.ndarray,
    grid: PixelGrid,
    rules: PatchRules,
) -> tuple[list[CutPatch], CutStats]:
    """Cut a chunk's arrays into patches and select them by the rules.

    Args:
        chunk_key: The chunk's key (patch keys are ``<chunk>/<row>_<col>``).
        data: ``(bands, h, w)`` float32 on ``grid``.
        valid: ``(h, w)`` bool valid-pixel mask.
        mask: ``(h, w)`` uint8 labels (0 background, 1..254 landslide classes,
            :data:`IGNORE` no label, e.g. from a label raster).
        grid: The chunk grid (without halo).
        rules: Selection rules.

    A pixel is *labelled* when it is valid and its label is not :data:`IGNORE`. A patch is
    positive when a labelled pixel is > 0. Patches that have valid pixels but no labelled
    one carry nothing to learn and are dropped (``dropped_unlabelled``); the nodata rule
    alone decides about patches without valid pixels, as for vector labels. Kept masks are
    :data:`IGNORE` where the pixel is invalid or was already :data:`IGNORE`.
    """
    stats = CutStats()
    out: list[CutPatch] = []
    hwc: np.ndarray | None = None  # the chunk channels-last, made on the first kept patch
    # one pass per chunk: vector labels never hold IGNORE, so their patches skip the test
    labelled_all = mask != IGNORE
    has_ignore = not bool(labelled_all.all())
    for w in patch_windows(grid.height, grid.width, rules.size, rules.stride):
        stats.candidates += 1
        rs = slice(w.row_off, w.row_off + w.height)
        cs = slice(w.col_off, w.col_off + w.width)
        v = valid[rs, cs]
        if 1.0 - float(v.mean()) > rules.max_nodata_fraction:
            stats.dropped_nodata += 1
            continue
        mv = mask[rs, cs]
        if has_ignore:
            labelled = v & labelled_all[rs, cs]
            if not labelled.any() and v.any():
                stats.dropped_unlabelled += 1
                continue
            positive = bool((mv[labelled] > 0).any())
        else:
            positive = bool((mv[v] > 0).any())
        key = f"{chunk_key}/{w.row_off:05d}_{w.col_off:05d}"
        if not positive and stable_unit("neg", rules.seed, key) >= rules.negative_fraction:
            stats.dropped_negative += 1
            continue
        if hwc is None:
            hwc = channels_last(data, valid)
        m = mv.copy()
        m[~v] = IGNORE
        out.append(CutPatch(key, hwc[rs, cs], m, grid.subgrid(w), positive, w.row_off,
                            w.col_off))
        if positive:
            stats.kept_positive += 1
        else:
            stats.kept_negative += 1
    return out, stats


# --------------------------------------------------------------------------- statistics
_HIST_BINS = 1024


def _hist_range(band: str) -> tuple[float, float]:
    lo, hi = bandreg.get(band).valid_range
    if not np.isfinite(lo) or not np.isfinite(hi):
        return (-100.0, 100.0) if band == "curvature" else (-1.0, 1.0)
    return (lo, hi)


@dataclass
class BandStats:
    """Mergeable per-band statistics (a Beam combiner's accumulator).

    Mean/std/min/max are exact; percentiles come from a fixed-range histogram of
    1,024 bins over each band's declared valid range (resolution = range / 1024).
    """

    bands: tuple[str, ...]
    count: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    total_sq: np.ndarray = field(init=False)
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    hist: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.bands)
        self.count = np.zeros(n, np.int64)
        self.total = np.zeros(n, np.float64)
        self.total_sq = np.zeros(n, np.float64)
        self.minimum = np.full(n, np.inf)
        self.maximum = np.full(n, -np.inf)
        self.hist = np.zeros((n, _HIST_BINS), np.int64)

    def add(self, image: np.ndarray, valid: np.ndarray) -> BandStats:
        """Add the valid pixels of an ``(h, w, c)`` (or ``(n, h, w, c)``) image."""
        c = image.shape[-1]
        px = image.reshape(-1, c) if valid.all() else image[valid]  # (n, c)
        return self.add_bands(px.T)

    def add_bands(self, px: np.ndarray) -> BandStats:
        """Add ``(c, n)`` band-major pixel values (all valid and finite).

        Band by band on contiguous rows (faster than column reductions of ``(n, c)``).
        Sums are taken in float64, so the variance of a DEM (mean 3000 m, std 10 m) keeps
        its digits.
        """
        if px.ndim != 2 or px.shape[0] != len(self.bands):
            raise ValueError(f"expected ({len(self.bands)}, n) pixels, got shape {px.shape}")
        if px.shape[1] == 0:
            return self
        self.count += px.shape[1]
        for i, b in enumerate(self.bands):
            row = px[i]
            # sums accumulate in float64 (buffered casts, no float64 copy of the pixels);
            # einsum, not np.dot: BLAS threads would spin on the cores that gzip and the
            # next chunk's decoding need
            self.total[i] += row.sum(dtype=np.float64)
            self.total_sq[i] += np.einsum("i,i->", row, row, dtype=np.float64)
            self.minimum[i] = min(self.minimum[i], float(row.min()))
            self.maximum[i] = max(self.maximum[i], float(row.max()))
            lo, hi = _hist_range(b)
            # same bins as np.histogram over [lo, hi] (last bin closed), in float32: 6x
            # faster than float64 temporaries, bin edges move by float32 rounding only
            idx = row - np.float32(lo)
            idx *= np.float32(_HIST_BINS / (hi - lo))
            np.clip(idx, 0, _HIST_BINS - 1, out=idx)
            self.hist[i] += np.bincount(idx.astype(np.uint16), minlength=_HIST_BINS)
        return self

    def merge(self, other: BandStats) -> BandStats:
        if other.bands != self.bands:
            raise ValueError(f"Cannot merge stats of bands {other.bands} into {self.bands}.")
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.minimum = np.minimum(self.minimum, other.minimum)
        self.maximum = np.maximum(self.maximum, other.maximum)
        self.hist += other.hist
        return self

    def summary(self, percentiles: Sequence[float] = (1, 2, 50, 98, 99)) -> dict[str, dict]:
        """JSON-able ``{band: {count, mean, std, min, max, p1, ...}}``."""
        out: dict[str, dict] = {}
        for i, b in enumerate(self.bands):
            n = int(self.count[i])
            if n == 0:
                out[b] = {"count": 0}
                continue
            mean = self.total[i] / n
            var = max(self.total_sq[i] / n - mean * mean, 0.0)
            lo, hi = _hist_range(b)
            edges = np.linspace(lo, hi, _HIST_BINS + 1)
            cdf = np.cumsum(self.hist[i]) / max(self.hist[i].sum(), 1)
            d = {"count": n, "mean": float(mean), "std": float(np.sqrt(var)),
                 "min": float(self.minimum[i]), "max": float(self.maximum[i])}
            for p in percentiles:
                j = int(np.searchsorted(cdf, p / 100.0))
                d[f"p{p:g}"] = float(np.clip(edges[min(j + 1, _HIST_BINS)], d["min"], d["max"]))
            out[b] = d
        return out

