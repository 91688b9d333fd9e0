"""The band registry: names, units, scaling and nodata of every band the project knows.

Arrays inside the project are float32 in *physical* units (surface reflectance 0-1,
metres, degrees). ``scale``/``offset`` convert stored integers to those units:
``physical = stored * scale + offset`` (Sentinel-2 L2A digital numbers use 1e-4).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipelines.errors import BandError


@dataclass(frozen=True)
class Band:
    """One band's declaration.

    Attributes:
        name: Canonical name (``B4``, ``DEM``, ``slope``...).
        description: Human-readable description, written into GeoTIFF band descriptions.
        unit: Physical unit of the float values.
        scale: Multiplier from stored integers to physical units.
        offset: Offset from stored integers to physical units.
        nodata: Stored value that marks missing data (``None`` when the band has none).
        kind: ``"optical"`` or ``"terrain"``.
        wavelength_nm: Central wavelength for optical bands.
        resolution_m: Native resolution of the band.
        valid_range: Plausible physical range, used to flag corrupt input.
    """

    name: str
    description: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    kind: str = "optical"
    wavelength_nm: float | None = None
    resolution_m: float = 10.0
    valid_range: tuple[float, float] = (float("-inf"), float("inf"))


_S2 = [
    # name, description, wavelength, native resolution
    ("B1", "Coastal aerosol", 443, 60),
    ("B2", "Blue", 490, 10),
    ("B3", "Green", 560, 10),
    ("B4", "Red", 665, 10),
    ("B5", "Red edge 1", 705, 20),
    ("B6", "Red edge 2", 740, 20),
    ("B7", "Red edge 3", 783, 20),
    ("B8", "NIR", 842, 10),
    ("B8A", "Narrow NIR", 865, 20),
    ("B9", "Water vapour", 945, 60),
    ("B11", "SWIR 1", 1610, 20),
    ("B12", "SWIR 2", 2190, 20),
]

#: Sentinel-2 L2A surface-reflectance bands in their conventional order (12 bands).
SENTINEL2_BANDS: tuple[str, ...] = tuple(b[0] for b in _S2)

#: Terrain bands derived from (or being) a DEM.
TERRAIN_BANDS: tuple[str, ...] = ("DEM", "slope", "aspect", "curvature", "hillshade")

REGISTRY: dict[str, Band] = {
    name: Band(
        name=name,
        description=f"Sentinel-2 {name} ({desc}, {wl} nm)",
        unit="reflectance",
        scale=1e-4,
        nodata=0,
        kind="optical",
        wavelength_nm=float(wl),
        resolution_m=float(res),
        valid_range=(-0.2, 2.0),
    )
    for name, desc, wl, res in _S2
}
# B10 (cirrus) is absent from L2A products but present in L1C-derived datasets such as
# Landslide4Sense, so it is known without being one of SENTINEL2_BANDS.
REGISTRY["B10"] = Band("B10", "Sentinel-2 B10 (Cirrus, 1375 nm)", "reflectance", scale=1e-4,
                       nodata=0, wavelength_nm=1375.0, resolution_m=60.0, valid_range=(-0.2, 2.0))
# The synthetic world's per-image cloud classes (an SCL-like quality band, not imagery).
REGISTRY["clouds"] = Band("clouds", "Cloud mask (0 clear, 1 cloud, 2 cloud shadow, 3 thin "
                          "cloud or faint shadow)", "class", kind="mask",
                          valid_range=(0.0, 3.0))
REGISTRY.update(
    {
        "DEM": Band("DEM", "Elevation", "m", nodata=-32768, kind="terrain",
                    resolution_m=30.0, valid_range=(-500.0, 9000.0)),
        "slope": Band("slope", "Slope (Horn)", "degree", nodata=-9999, kind="terrain",
                      valid_range=(0.0, 90.0)),
        "aspect": Band("aspect", "Aspect, clockwise from north", "degree", nodata=-9999,
                       kind="terrain", valid_range=(0.0, 360.0)),
        "curvature": Band("curvature", "Curvature (Zevenbergen-Thorne, 1/100 m)", "1/100m",
                          nodata=-9999, kind="terrain"),
        "hillshade": Band("hillshade", "Hillshade (azimuth 315, altitude 45)", "0-255",
                          nodata=-9999, kind="terrain", valid_range=(0.0, 255.0)),
    }
)

# Common alternative spellings, mapped to canonical names.
_ALIASES = {
    "elevation": "DEM", "dem": "DEM", "srtm": "DEM",
    "b01": "B1", "b02": "B2", "b03": "B3", "b04": "B4", "b05": "B5", "b06": "B6",
    "b07": "B7", "b08": "B8", "b8a": "B8A", "b09": "B9", "b10": "B10",
    "red": "B4", "green": "B3", "blue": "B2", "nir": "B8",
    "swir1": "B11", "swir2": "B12",
}


#: Spectral indices whose change between dates may be a stack channel (``dNDVI@prev``,
#: see :mod:`pipelines.geo.stack`): name -> ``(a, b)`` of ``(a - b) / (a + b)``.
INDICES: dict[str, tuple[str, str]] = {
    "NDVI": ("B8", "B4"),    # vegetation: fresh scars lose it
    "NDWI": ("B3", "B8"),    # water and wet debris
    "NBR": ("B8", "B12"),    # normalised burn ratio: sensitive to bare soil and rock
}


def _stacked(name: str) -> str:
    """Canonical form of a stack channel.

    ``b4@prev`` -> ``B4@prev``, ``dndvi@prev`` -> ``dNDVI@prev``, ``db4@prev`` -> ``dB4@prev``.
    """
    base, _, ref = name.partition("@")
    if not ref.strip():
        raise BandError(f"Band {name!r} names no reference after '@' (e.g. B4@prev).")
    ref = ref.strip()
    if base in REGISTRY:
        return f"{base}@{ref}"
    if base[:1] in "dD" and len(base) > 1:
        rest = base[1:]
        if rest.upper() in INDICES:
            return f"d{rest.upper()}@{ref}"
        try:
            return f"d{canonical(rest)}@{ref}"
        except BandError:
            pass
    return f"{canonical(base)}@{ref}"


def canonical(name: str) -> str:
    """Return the canonical band name for ``name`` (case and common aliases tolerated).

    Stack channels (``B4@prev``, ``dNDVI@prev``; see :mod:`pipelines.geo.stack`) are
    canonical when their base band is.

    Raises:
        BandError: ``name`` is not a known band; the message suggests close names.
    """
    if "@" in name:
        return _stacked(name)
    if name in REGISTRY:
        return name
    lowered = name.strip().lower()
    for key in REGISTRY:
        if key.lower() == lowered:
            return key
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    close = difflib.get_close_matches(name, list(REGISTRY) + list(_ALIASES), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise BandError(
        f"Unknown band {name!r}.{hint} Known bands: {', '.join(REGISTRY)}."
    )


def resolve(names: Iterable[str]) -> tuple[str, ...]:
    """Canonicalise a list of band names, rejecting unknown and duplicate names."""
    out = tuple(canonical(n) for n in names)
    if not out:
        raise BandError("No bands requested: name at least one band, e.g. B2,B3,B4,B8.")
    dupes = sorted({n for n in out if out.count(n) > 1})
    if dupes:
        raise BandError(f"Bands requested more than once: {', '.join(dupes)}.")
    return out


def get(name: str) -> Band:
    """Return the :class:`Band` declaration for ``name`` (stack channels included)."""
    name = canonical(name)
    if "@" not in name:
        return REGISTRY[name]
    base, _, ref = name.partition("@")
    if base in REGISTRY:
        b = REGISTRY[base]
        return Band(name, f"{b.description}, reference {ref}", b.unit, b.scale, b.offset,
                    b.nodata, b.kind, b.wavelength_nm, b.resolution_m, b.valid_range)
    what = base[1:]
    if what in INDICES:
        return Band(name, f"Change of {what} (target minus reference {ref})", "index",
                    kind="change", valid_range=(-2.0, 2.0))
    b = REGISTRY[what]
    lo, hi = b.valid_range
    span = hi - lo if math.isfinite(lo) and math.isfinite(hi) else 200.0
    return Band(name, f"Change of {b.description} (target minus reference {ref})", b.unit,
                kind="change", wavelength_nm=b.wavelength_nm, resolution_m=b.resolution_m,
                valid_range=(-span / 2.0, span / 2.0))


def require(available: Sequence[str], wanted: Sequence[str], what: str = "source") -> None:
    """Raise :class:`BandError` naming every band of ``wanted`` missing from ``available``."""
    have = set(available)
    missing = [b for b in wanted if b not in have]
    if missing:
        raise BandError(
            f"The {what} lacks band(s) {', '.join(missing)}; it provides "
            f"{', '.join(available) or 'no bands'}. Choose a source that has them, or "
            f"select only available bands."
        )
