"""Regions, UTM zones, chunks, halos and patch windows.

The world is tiled, per projected CRS, by square chunks anchored at a fixed origin
(x = 0, y = 10,000,000 m: the top of every UTM zone, north or south). A chunk's key
``(epsg, row, col)`` therefore depends only on the CRS, the pixel size and the chunk size,
never on the area of interest, so two runs over overlapping regions name the same chunk
the same way (this is what makes sweeps resumable and outputs mergeable).

Rows grow southwards and columns eastwards. Every transform is exact: chunk
``(row, col)`` has its top-left corner at ``(col * C, 10_000_000 - row * C)`` with
``C = chunk_size * pixel_size``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pipelines.errors import ConfigError, CRSError, DataNotFoundError, RegionError

ORIGIN_X = 0.0
ORIGIN_Y = 10_000_000.0
WGS84 = "EPSG:4326"
#: Latitude limits of the UTM zones (degrees north and south).
UTM_MAX_LAT = 84.0
#: The smallest --buffer-m / point_region half-side, one 10 m pixel (metres).
MIN_BUFFER_M = 10.0
#: The widest longitude span of a region's polygon (wider: an unsplit antimeridian ring).
MAX_LON_SPAN = 180.0

_KEY_RE = re.compile(r"^(\d+)_r(-?\d+)_c(-?\d+)$")


# --------------------------------------------------------------------------- pixel grids
@dataclass(frozen=True)
class PixelGrid:
    """A georeferenced pixel grid: what to read from a source or write to a raster.

    Attributes:
        crs: CRS as ``"EPSG:nnnn"`` (or WKT for CRSs without an EPSG code).
        transform: The affine transform as its six coefficients ``(a, b, c, d, e, f)``.
        width: Number of columns.
        height: Number of rows.
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @classmethod
    def from_affine(cls, crs: str, transform: Affine, width: int, height: int) -> PixelGrid:
        return cls(str(crs), tuple(transform)[:6], int(width), int(height))  # type: ignore[arg-type]

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def res(self) -> float:
        return abs(self.transform[0])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of a north-up grid."""
        a, _, c, _, e, f = self.transform
        return (c, f + e * self.height, c + a * self.width, f)

    def buffered(self, pixels: int) -> PixelGrid:
        """The same grid grown by ``pixels`` on every side (a halo)."""
        a, b, c, d, e, f = self.transform
        return PixelGrid(self.crs, (a, b, c - a * pixels, d, e, f - e * pixels),
                         self.width + 2 * pixels, self.height + 2 * pixels)

    def subgrid(self, window: Window) -> PixelGrid:
        """The grid of ``window`` (row/col offsets in this grid's pixels)."""
        t = self.affine @ Affine.translation(window.col_off, window.row_off)
        return PixelGrid.from_affine(self.crs, t, int(window.width), int(window.height))

    def to_dict(self) -> dict:
        return {"crs": self.crs, "transform": list(self.transform),
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> PixelGrid:
        t = tuple(float(v) for v in d["transform"])
        return cls(d["crs"], t, int(d["width"]), int(d["height"]))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- chunk keys
@dataclass(frozen=True, order=True)
class ChunkKey:
    """Deterministic, AOI-independent name of a chunk: ``(epsg, row, col)``."""

    epsg: int
    row: int
    col: int

    def __str__(self) -> str:
        return f"{self.epsg}_r{self.row}_c{self.col}"

    @staticmethod
    def is_key(text: str) -> bool:
        """Whether ``text`` is a chunk key (``32645_r812_c33``)."""
        return _KEY_RE.match(text) is not None

    @classmethod
    def parse(cls, text: str) -> ChunkKey:
        m = _KEY_RE.match(text.strip())
        if not m:
            raise ConfigError(f"Not a chunk key: {text!r} (expected like '32645_r812_c33').")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))


@dataclass(frozen=True)
class GridSpec:
    """How one projected CRS is cut into chunks.

    Attributes:
        epsg: EPSG code of the projected CRS (a UTM zone by default).
        pixel_size: Pixel size in CRS units (metres).
        chunk_size: Chunk side in pixels (without halo).
        halo: Context pixels read around each chunk.
    """

    epsg: int
    pixel_size: float = 10.0
    chunk_size: int = 512
    halo: int = 32

    def __post_init__(self) -> None:
        if self.pixel_size <= 0 or not math.isfinite(self.pixel_size):
            raise ConfigError(f"pixel_size must be a positive number, got {self.pixel_size!r}.")
        if self.chunk_size < 8:
            raise ConfigError(f"chunk_size must be at least 8 pixels, got {self.chunk_size!r}.")
        if self.halo < 0:
            raise ConfigError(f"halo must be >= 0 pixels, got {self.halo!r}.")
        metric_crs(self.epsg)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def chunk_m(self) -> float:
        return self.chunk_size * self.pixel_size

    def chunk_grid(self, key: ChunkKey, halo: bool = False) -> PixelGrid:
        """The pixel grid of chunk ``key``, optionally grown by the halo."""
        if key.epsg != self.epsg:
            raise ConfigError(f"Chunk {key} belongs to EPSG:{key.epsg}, not EPSG:{self.epsg}.")
        left = ORIGIN_X + key.col * self.chunk_m
        top = ORIGIN_Y - key.row * self.chunk_m
        ps = float(self.pixel_size)
        g = PixelGrid(self.crs, (ps, 0.0, float(left), 0.0, -ps, float(top)),
                      self.chunk_size, self.chunk_size)
        return g.buffered(self.halo) if halo and self.halo else g

    def chunk_box(self, key: ChunkKey) -> BaseGeometry:
        return box(*self.chunk_grid(key).bounds)

    def keys_covering(self, geom: BaseGeometry) -> list[ChunkKey]:
        """Keys of every chunk whose footprint intersects ``geom`` (in this CRS), sorted."""
        keys, _ = self._covering(geom)
        return keys

    def _covering(self, geom: BaseGeometry) -> tuple[list[ChunkKey], np.ndarray]:
        """The keys covering ``geom`` and their footprints (:meth:`chunk_box`), in one pass.

        Every chunk of the bounding box is tested at once (shapely's vectorised
        predicates on the prepared geometry).
        """
        if geom.is_empty:
            return [], np.empty(0, dtype=object)
        minx, miny, maxx, maxy = geom.bounds
        c0 = math.floor((minx - ORIGIN_X) / self.chunk_m)
        c1 = math.ceil((maxx - ORIGIN_X) / self.chunk_m)
        r0 = math.floor((ORIGIN_Y - maxy) / self.chunk_m)
        r1 = math.ceil((ORIGIN_Y - miny) / self.chunk_m)
        grid_rows, grid_cols = np.meshgrid(np.arange(r0, max(r1, r0 + 1)),
                                           np.arange(c0, max(c1, c0 + 1)), indexing="ij")
        rows, cols = grid_rows.ravel(), grid_cols.ravel()
        ps = float(self.pixel_size)
        # the arithmetic of chunk_grid(key).bounds, element-wise
        left = ORIGIN_X + cols * self.chunk_m
        top = ORIGIN_Y - rows * self.chunk_m
        boxes = shapely.box(left, top + -ps * self.chunk_size, left + ps * self.chunk_size, top)
        shapely.prepare(geom)
        # A chunk that only touches the region along an edge holds none of it.
        hit = shapely.intersects(geom, boxes) & ~shapely.touches(geom, boxes)
        keys = [ChunkKey(self.epsg, int(r), int(c)) for r, c in zip(rows[hit], cols[hit])]
        return keys, boxes[hit]  # row-major: already sorted by key

    def to_dict(self) -> dict:
        return {"epsg": self.epsg, "pixel_size": self.pixel_size,
                "chunk_size": self.chunk_size, "halo": self.halo}


@dataclass(frozen=True)
class Chunk:
    """A chunk of a region: its key, its grid spec and the part of the region it holds."""

    key: ChunkKey
    spec: GridSpec
    #: WKB of the region's part inside this chunk (in the chunk CRS); excluded from eq/hash.
    region_wkb: bytes = field(default=b"", compare=False, repr=False)

    @property
    def grid(self) -> PixelGrid:
        return self.spec.chunk_grid(self.key)

    @property
    def read_grid(self) -> PixelGrid:
        """The grid to read: the chunk plus its halo."""
        return self.spec.chunk_grid(self.key, halo=True)

    @property
    def region(self) -> BaseGeometry:
        if self.region_wkb:
            return shapely.from_wkb(self.region_wkb)
        return self.spec.chunk_box(self.key)

    def region_mask(self, halo: bool = False) -> np.ndarray:
        """Boolean mask of the chunk's pixels whose centres lie inside the region."""
        from rasterio.features import geometry_mask

        g = self.read_grid if halo else self.grid
        if not self.region_wkb:
            return np.ones(g.shape, dtype=bool)
        # the pixel-centre box lies inside: every centre does (most chunks of a big AOI)
        a, e = abs(g.affine.a), abs(g.affine.e)
        x0, y0, x1, y1 = g.bounds
        if self.region.contains(shapely.box(x0 + a / 2, y0 + e / 2, x1 - a / 2, y1 - e / 2)):
            return np.ones(g.shape, dtype=bool)
        return geometry_mask([self.region], out_shape=g.shape, transform=g.affine, invert=True)


# --------------------------------------------------------------------------- UTM zones
def utm_zone(lon: float) -> int:
    """UTM zone number (1-60) of a longitude (the Norway/Svalbard exceptions are ignored)."""
    if not -180.0 <= lon <= 180.0:
        raise RegionError(f"Longitude {lon} is outside [-180, 180].")
    return min(int((lon + 180.0) // 6.0) + 1, 60)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone holding ``(lon, lat)`` (326zz north, 327zz south)."""
    if not -90.0 <= lat <= 90.0:
        raise RegionError(f"Latitude {lat} is outside [-90, 90].")
    return (32600 if lat >= 0 else 32700) + utm_zone(lon)


def distorts_areas(crs: CRS | str | int) -> bool:
    """True for CRSs whose planar areas are not true areas (degrees, Mercator)."""
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        return True
    op = crs.coordinate_operation
    method = (op.method_name if op is not None else "").lower()
    return "mercator" in method and "transverse" not in method


def is_metric_crs(crs: CRS | str | int) -> bool:
    """Whether ``crs`` (a pyproj CRS, ``"EPSG:32645"``, WKT...) is projected in true metres.

    Not in feet, and not Mercator, whose metres stretch by 1 / cos(latitude).
    """
    crs = CRS.from_user_input(crs)
    return bool(crs.is_projected and crs.axis_info
                and all(math.isclose(a.unit_conversion_factor, 1.0) for a in crs.axis_info)
                and not distorts_areas(crs))


def metric_crs(epsg: int | str, flag: str = "--epsg") -> CRS:
    """The CRS of EPSG code ``epsg``, refused unless it is projected in true metres.

    Chunks, pixel sizes and areas (m2, km2) are in CRS units, so a CRS in feet would make
    a 10 m pixel 10 ft and count square feet as square metres, and Mercator's stretched
    metres would make it 10 / cos(latitude) m on the ground.

    Args:
        epsg: The EPSG code.
        flag: The option that gave it, for the messages.

    Raises:
        CRSError: an unknown code, a geographic CRS, a projected CRS in another unit
            (US survey feet, international feet...) or a Mercator projection.
    """
    example = f"EPSG:{utm_epsg(85.0, 28.0)} for 84-90 E north of the equator"
    try:
        crs = CRS.from_epsg(int(epsg))
    except Exception as exc:  # pyproj's CRSError, or not an integer
        raise CRSError(f"Unknown EPSG code {epsg!r} for {flag}: give a projected CRS in "
                       f"metres such as a UTM zone ({example}).") from exc
    if not crs.is_projected:
        raise CRSError(
            f"EPSG:{epsg} ({crs.name}) is not a projected CRS; pixel sizes and areas need "
            f"metres. Use a UTM zone ({example}), or leave {flag} unset."
        )
    if not is_metric_crs(crs):
        if distorts_areas(crs):
            why = ("is a Mercator projection: its metres stretch by 1/cos(latitude), so "
                   "pixel sizes and areas would be wrong away from the equator")
        else:
            unit = crs.axis_info[0].unit_name if crs.axis_info else "no declared unit"
            why = (f"measures in {unit}, not metres: pixel sizes and areas would be read in "
                   f"the wrong unit")
        raise CRSError(
            f"EPSG:{epsg} ({crs.name}) {why}. Use a projected CRS in metres such as the UTM "
            f"zone of the area ({example}), or leave {flag} unset to use the UTM zone of "
            f"each part of the region."
        )
    return crs


def to_crs(geom: BaseGeometry, src: str, dst: str, densify_deg: float = 0.01) -> BaseGeometry:
    """Reproject a shapely geometry; edges in degrees are densified first so they bend."""
    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return geom
    if CRS.from_user_input(src).is_geographic and densify_deg:
        geom = shapely.segmentize(geom, densify_deg)
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def split_by_utm_zone(region: BaseGeometry) -> dict[int, BaseGeometry]:
    """Split a WGS 84 region into its parts per UTM zone and hemisphere, each projected.

    Returns:
        ``{epsg: part_in_that_utm_crs}`` for every zone the region overlaps with area.
    """
    minx, _, maxx, _ = region.bounds
    parts: dict[int, BaseGeometry] = {}
    for zone in range(utm_zone(minx), utm_zone(maxx) + 1):
        west = -180.0 + 6.0 * (zone - 1)
        for south, (lat0, lat1) in ((False, (0.0, 90.0)), (True, (-90.0, 0.0))):
            part = region.intersection(box(west, lat0, west + 6.0, lat1))
            if part.is_empty or part.area == 0:
                continue
            epsg = (32700 if south else 32600) + zone
            parts[epsg] = to_crs(part, WGS84, f"EPSG:{epsg}")
    return parts


# --------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class Region:
    """An area of interest in WGS 84, with a name for logs and outputs."""

    name: str
    wkb: bytes

    @property
    def geometry(self) -> BaseGeometry:
        return shapely.from_wkb(self.wkb)

    @classmethod
    def from_geometry(cls, name: str, geom: BaseGeometry) -> Region:
        return cls(name, shapely.to_wkb(geom))

    def to_geojson(self) -> dict:
        return {"type": "Feature", "properties": {"name": self.name},
                "geometry": mapping(self.geometry)}


def _check_region(name: str, geom: BaseGeometry) -> BaseGeometry:
    if geom is None or geom.is_empty:
        raise RegionError(f"The area of interest {name!r} is empty: give a polygon with area.")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys = shapely.get_parts(geom)
    geom = shapely.union_all([p for p in polys if p.geom_type in ("Polygon", "MultiPolygon")])
    if geom.is_empty or geom.area == 0:
        raise RegionError(
            f"The area of interest {name!r} has no area (points or lines?). Buffer points "
            f"with --point LAT,LON --buffer-m M, or give polygons."
        )
    minx, miny, maxx, maxy = geom.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise RegionError(
            f"The area of interest {name!r} has bounds {geom.bounds}, outside longitude/latitude "
            f"ranges: is it in a projected CRS without a .prj, or are lon/lat swapped?"
        )
    for part in shapely.get_parts(geom):
        west, _, east, _ = part.bounds
        if east - west > MAX_LON_SPAN:
            raise RegionError(
                f"The area of interest {name!r} has a polygon spanning {east - west:.1f} "
                f"degrees of longitude ({west:g} to {east:g}), more than {MAX_LON_SPAN:g}: "
                f"a polygon crossing the antimeridian (180 degrees) read the long way round "
                f"the world. Split it at the antimeridian into a MultiPolygon with one part "
                f"up to 180 and one from -180 (as GeoJSON requires, e.g. `ogr2ogr "
                f"-wrapdateline`)."
            )
    return geom


def parse_bbox(text: str) -> Region:
    """Parse ``minlon,minlat,maxlon,maxlat`` into a :class:`Region`."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise RegionError(f"Bad bbox {text!r}: expected 'minlon,minlat,maxlon,maxlat'.")
    minx, miny, maxx, maxy = vals
    if not (minx < maxx and miny < maxy):
        raise RegionError(
            f"Bad bbox {text!r}: min must be below max (order is minlon,minlat,maxlon,maxlat)."
        )
    return Region.from_geometry(f"bbox({text})", _check_region(text, box(*vals)))


def point_region(lat: float, lon: float, buffer_m: float) -> Region:
    """A square region of half-side ``buffer_m`` metres around a point.

    The square is drawn in the point's UTM zone. A square crossing the antimeridian
    (180 degrees) is split there into a MultiPolygon, one part on each side, as GeoJSON
    does; each part is then swept in its own UTM zone.

    Args:
        lat: Latitude in decimal degrees, within the UTM limits (-84 to 84).
        lon: Longitude in decimal degrees (-180 to 180).
        buffer_m: Half-side of the square in metres, at least one 10 m pixel.

    Raises:
        RegionError: a buffer under :data:`MIN_BUFFER_M` metres, or a latitude beyond the
            UTM limits.
    """
    if not buffer_m >= MIN_BUFFER_M:
        raise RegionError(
            f"buffer_m {buffer_m:g} is under {MIN_BUFFER_M:g} m, one 10 m pixel: the "
            f"buffer is in metres, not degrees (0.01 degrees is about 1100 m)."
        )
    if not -UTM_MAX_LAT <= lat <= UTM_MAX_LAT:
        raise RegionError(
            f"Latitude {lat:g} is beyond the UTM limits (-{UTM_MAX_LAT:g} to "
            f"{UTM_MAX_LAT:g}): no UTM zone holds a square there. Are latitude and "
            f"longitude swapped (the order is LAT,LON)?"
        )
    epsg = utm_epsg(lon, lat)
    tr = Transformer.from_crs(WGS84, f"EPSG:{epsg}", always_xy=True)
    x, y = tr.transform(lon, lat)
    sq = box(x - buffer_m, y - buffer_m, x + buffer_m, y + buffer_m)
    geom = _unwrap_lon(to_crs(sq, f"EPSG:{epsg}", WGS84), lon)
    geom = _split_at_antimeridian(geom)
    return Region.from_geometry(f"point({lat},{lon})+{buffer_m:g}m", _check_region("point", geom))


def _unwrap_lon(geom: BaseGeometry, lon0: float) -> BaseGeometry:
    """``geom`` with its longitudes moved by 360 degrees to lie within 180 of ``lon0``."""
    return shapely.transform(geom, lambda xy: np.column_stack(
        [xy[:, 0] - 360.0 * np.round((xy[:, 0] - lon0) / 360.0), xy[:, 1]]))


def _split_at_antimeridian(geom: BaseGeometry) -> BaseGeometry:
    """A geometry whose longitudes may run past +-180, cut there and folded back."""
    minx, _, maxx, _ = geom.bounds
    if minx >= -180.0 and maxx <= 180.0:
        return geom
    parts = [geom.intersection(box(-180.0, -90.0, 180.0, 90.0))]
    for west, shift in ((180.0, -360.0), (-540.0, 360.0)):
        side = geom.intersection(box(west, -90.0, west + 360.0, 90.0))
        if not side.is_empty:
            parts.append(shapely.transform(side, lambda xy, d=shift: xy + np.array([d, 0.0])))
    polys = [p for g in parts for p in shapely.get_parts(g)
             if p.geom_type == "Polygon" and p.area > 0]
    return shapely.MultiPolygon(polys) if len(polys) > 1 else polys[0]


def load_region(spec: str | Path) -> Region:
    """Load an area of interest from a vector file (any format geopandas reads) or a bbox.

    Every feature of the file's layer is unioned; the result is in WGS 84. A file with
    several layers (a GeoPackage, a KML with folders...) is refused rather than swept in
    part: which layers make the area is not for this function to guess. A region
    crossing the antimeridian must be split there (a MultiPolygon with a part on each
    side, as GeoJSON requires); a polygon spanning more than 180 degrees of longitude is
    refused.

    Args:
        spec: A vector file (local or gs://) or a bbox ``minlon,minlat,maxlon,maxlat``.

    Raises:
        DataNotFoundError: the file does not exist.
        CRSError: the file has no CRS.
        RegionError: the geometry is empty, has no area or is out of range, a polygon
            spans more than 180 degrees of longitude, or the file has several layers.
    """
    text = str(spec)
    if re.fullmatch(r"\s*-?[\d.]+\s*(,\s*-?[\d.]+\s*){3}", text):
        return parse_bbox(text)
    import geopandas as gpd

    from pipelines import fsio

    if not fsio.exists(text):
        raise DataNotFoundError(
            f"Area of interest {text!r} not found. Give a vector file (GeoJSON, GeoPackage, "
            f"shapefile...) or a bbox 'minlon,minlat,maxlon,maxlat'."
        )
    try:
        with fsio.local_copy(text) as local:
            layers = _vector_layers(local)
            if len(layers) > 1:
                raise RegionError(
                    f"The area of interest {text!r} holds {len(layers)} layers "
                    f"({', '.join(layers)}); give a file with one layer, e.g. `ogr2ogr "
                    f"aoi.gpkg {Path(text).name} {layers[0]}` to keep one, or merge them."
                )
            gdf = gpd.read_file(local, layer=layers[0] if layers else None)
    except RegionError:
        raise
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise RegionError(f"Cannot read the area of interest {text!r}: {exc}") from exc
    if gdf.crs is None:
        raise CRSError(
            f"The area of interest {text!r} has no CRS. Add one (e.g. a .prj file, or "
            f"`ogr2ogr -a_srs EPSG:4326`)."
        )
    gdf = gdf.to_crs(WGS84)
    geom = shapely.union_all(shapely.make_valid(gdf.geometry.values))
    return Region.from_geometry(Path(text).stem, _check_region(text, geom))


def _vector_layers(path: str) -> list[str]:
    """The names of the layers of a vector file that hold geometries (``[]``: unknown)."""
    import pyogrio

    try:
        layers = pyogrio.list_layers(path)
    except Exception:  # not a format pyogrio lists: let read_file say what is wrong
        return []
    return [str(name) for name, gtype in layers if gtype is not None]


def region_from_geojson(obj: dict | str, name: str = "geojson") -> Region:
    """A region from a GeoJSON geometry, Feature or FeatureCollection (WGS 84)."""
    d = json.loads(obj) if isinstance(obj, str) else obj
    if d.get("type") == "FeatureCollection":
        geom = shapely.union_all([shape(f["geometry"]) for f in d["features"]])
    elif d.get("type") == "Feature":
        geom = shape(d["geometry"])
    else:
        geom = shape(d)
    return Region.from_geometry(name, _check_region(name, geom))


# --------------------------------------------------------------------------- planning
def plan_chunks(
    region: Region,
    pixel_size: float = 10.0,
    chunk_size: int = 512,
    halo: int = 32,
    epsg: int | None = None,
) -> list[Chunk]:
    """Cover a region with chunks, per UTM zone (or in one given projected CRS).

    Args:
        region: The area of interest (WGS 84).
        pixel_size: Pixel size in metres.
        chunk_size: Chunk side in pixels.
        halo: Context pixels around each chunk.
        epsg: Force one projected CRS for the whole region instead of UTM zones.

    Returns:
        Chunks sorted by key; each carries the region's part inside it.
    """
    chunks: list[Chunk] = []
    for code, part in sorted(zone_parts(region, epsg).items()):
        spec = GridSpec(code, pixel_size, chunk_size, halo)
        keys, boxes = spec._covering(part)
        insides = shapely.to_wkb(shapely.intersection(part, boxes))
        chunks += [Chunk(key, spec, bytes(wkb)) for key, wkb in zip(keys, insides)]
    if not chunks:
        raise RegionError(f"The area of interest {region.name!r} covers no chunk.")
    return chunks


def zone_parts(region: Region, epsg: int | None = None) -> dict[int, BaseGeometry]:
    """``{epsg: the region's part in that CRS}``: per UTM zone, or all in ``epsg``."""
    geom = region.geometry
    return {epsg: to_crs(geom, WGS84, f"EPSG:{epsg}")} if epsg else split_by_utm_zone(geom)


def chunk_keys(region: Region, pixel_size: float = 10.0, chunk_size: int = 512,
               epsg: int | None = None) -> dict[int, tuple[list[ChunkKey], BaseGeometry]]:
    """``{epsg: (keys, the region's part)}``: :func:`plan_chunks`'s keys, the region uncut.

    Raises:
        RegionError: the region covers no chunk.
    """
    out: dict[int, tuple[list[ChunkKey], BaseGeometry]] = {}
    for code, part in sorted(zone_parts(region, epsg).items()):
        keys = GridSpec(code, pixel_size, chunk_size, 0).keys_covering(part)
        if keys:
            out[code] = (keys, part)
    if not out:
        raise RegionError(f"The area of interest {region.name!r} covers no chunk.")
    return out


def patch_windows(
    height: int, width: int, patch: int, stride: int | None = None, cover_edges: bool = False
) -> Iterator[Window]:
    """Square windows of side ``patch`` over a ``height x width`` array.

    Args:
        height: Array height in pixels.
        width: Array width in pixels.
        patch: Window side in pixels.
        stride: Step between windows (defaults to ``patch``: no overlap).
        cover_edges: Add a last row/column of windows flush with the far edges, so
            every pixel is covered (for inference). Without it, partial windows are
            dropped (for training).
    """
    stride = stride or patch
    if patch <= 0 or stride <= 0:
        raise ConfigError(f"patch ({patch}) and stride ({stride}) must be positive.")
    if patch > height or patch > width:
        if cover_edges:
            raise ConfigError(f"Patch {patch} px is larger than the {height}x{width} array.")
        return

    def starts(n: int) -> list[int]:
        s = list(range(0, n - patch + 1, stride))
        if cover_edges and s[-1] + patch < n:
            s.append(n - patch)
        return s

    for r in starts(height):
        for c in starts(width):
            yield Window(c, r, patch, patch)
