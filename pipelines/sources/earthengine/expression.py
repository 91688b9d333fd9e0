"""The Earth Engine expression: a cloud-masked Sentinel-2 composite and DEM terrain bands.

:func:`build_image` builds it once, on the launcher; :func:`to_json` serialises it so that
the pickled source carries a string, never an ``ee`` object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.geo import bands as bandreg
from pipelines.geo.terrain import M_PER_DEG_LAT, M_PER_DEG_LON
from pipelines.sources.earthengine.config import AVAILABLE_BANDS, DEMS, NODATA, EEConfig

if TYPE_CHECKING:
    import ee

__all__ = ["CLOUD_PROBABILITY_COLLECTION", "SCL_MASKED_CLASSES", "build_image", "to_json"]

#: Sentinel-2 Scene Classification classes masked by ``cloud_mask="scl"``: no data (0),
#: saturated or defective (1), cloud shadow (3), cloud medium / high probability (8, 9),
#: thin cirrus (10), snow or ice (11).
#:
#: Class 2 (dark area pixels: mostly topographic cast shadow, also dark rock and burnt
#: ground) is deliberately kept. In the Himalaya steep slopes facing away from the sun
#: fall in it in many scenes (the sun is low in the dry season, when most clear scenes
#: are taken), and the sun-synchronous orbit shadows the same slopes scene after scene:
#: masking it could leave those slopes -- where landslides are -- without any valid
#: pixel in the window, i.e. nodata in exports and predictions. The price: a
#: shadowed pixel is real but dark imagery (the model also gets DEM, slope, aspect and,
#: if asked, hillshade to tell shade from scars), and a ``barest`` (lowest-NDVI)
#: composite may pick a shadowed scene for a pixel. Class 7 (unclassified) is kept too.
SCL_MASKED_CLASSES = (0, 1, 3, 8, 9, 10, 11)
CLOUD_PROBABILITY_COLLECTION = "COPERNICUS/S2_CLOUD_PROBABILITY"


def _sentinel2(config: EEConfig, names: Sequence[str]) -> ee.Image:
    import ee

    col = ee.ImageCollection(config.collection).filterDate(config.start, config.end)
    if config.bbox is not None:
        col = col.filterBounds(ee.Geometry.Rectangle(list(config.bbox)))
    if config.cloud_mask == "scl":
        classes = list(SCL_MASKED_CLASSES)

        def mask_scl(img: ee.Image) -> ee.Image:
            keep = img.select("SCL").remap(classes, [0] * len(classes), 1)
            return img.updateMask(keep)

        col = col.map(mask_scl)
    elif config.cloud_mask == "cloud_prob":
        probs = ee.ImageCollection(CLOUD_PROBABILITY_COLLECTION).filterDate(
            config.start, config.end)
        if config.bbox is not None:
            probs = probs.filterBounds(ee.Geometry.Rectangle(list(config.bbox)))
        joined = ee.Join.saveFirst("cloud_probability").apply(
            primary=col, secondary=probs,
            condition=ee.Filter.equals(leftField="system:index", rightField="system:index"),
        )
        threshold = config.max_cloud_prob

        def mask_prob(img: Any) -> ee.Image:
            img = ee.Image(img)
            prob = ee.Image(img.get("cloud_probability")).select("probability")
            return img.updateMask(prob.lt(threshold))

        col = ee.ImageCollection(joined).map(mask_prob)
    if config.composite in ("greenest", "barest"):
        # each pixel from its greenest (or least green) clear scene, by qualityMosaic: a
        # vegetation baseline, or a scar at its freshest
        sign = 1 if config.composite == "greenest" else -1

        def greenness(img: ee.Image) -> ee.Image:
            nd = img.normalizedDifference(["B8", "B4"]).multiply(sign)
            return img.addBands(nd.rename("greenness"))

        image = col.map(greenness).qualityMosaic("greenness").select(list(names))
        return image.divide(10000).rename(list(names))
    col = col.select(list(names))
    if config.composite == "median":
        image = col.median()
    elif config.composite == "mean":
        image = col.mean()
    else:  # mosaic: the most recent valid pixel on top
        image = col.sort("system:time_start").mosaic()
    # Harmonized L2A digital numbers -> surface reflectance 0-1.
    return image.divide(10000).rename(list(names))


def _terrain(config: EEConfig, names: Sequence[str]) -> ee.Image:
    import ee

    asset, band, is_collection = DEMS[config.dem]
    if is_collection:
        col = ee.ImageCollection(asset).select(band)
        # A mosaic has no native projection: give it the tiles' one, so terrain kernels run
        # on the DEM's own pixels rather than on whatever grid is requested.
        dem = col.mosaic().setDefaultProjection(col.first().projection())
    else:
        dem = ee.Image(asset).select(band)
    dem = dem.toFloat()
    proj = dem.projection()
    # Slope, aspect and hillshade come from the DEM resampled bilinearly (as TerrainSource
    # reads a DEM file onto the target grid before deriving them) and are never resampled
    # themselves: aspect is an angle, and interpolating angles fails where they wrap
    # (halfway between 350 and 10 degrees, both facing north, bilinear gives 180).
    surface = dem.resample("bilinear")
    layers = {"DEM": surface}
    if "slope" in names:
        layers["slope"] = ee.Terrain.slope(surface)
    if "aspect" in names:
        layers["aspect"] = ee.Terrain.aspect(surface)
    if "hillshade" in names:
        layers["hillshade"] = ee.Terrain.hillshade(surface, 315, 45)
    if "curvature" in names:
        layers["curvature"] = _curvature(dem, proj)
    return ee.Image.cat([layers[n].rename(n) for n in names])


def _pixel_step_m(lonlat: ee.Image, kernel: ee.Kernel) -> ee.Image:
    """Metres from a pixel's neighbour on one side to the other's, halved (one pixel step).

    ``kernel`` is the full central difference along one axis of the grid; the step's
    east and north components come from the differences of longitude (wrapped across the
    antimeridian, scaled by cos(latitude)) and of latitude, as
    :func:`pipelines.geo.terrain.write_terrain` converts degrees to metres.
    """
    lon, lat = lonlat.select("longitude"), lonlat.select("latitude")
    dlon = lon.convolve(kernel).add(540).mod(360).subtract(180)
    dlat = lat.convolve(kernel)
    east = dlon.multiply(lat.multiply(math.pi / 180).cos()).multiply(M_PER_DEG_LON / 2)
    north = dlat.multiply(M_PER_DEG_LAT / 2)
    return east.hypot(north)


def _curvature(dem: ee.Image, proj: ee.Projection) -> ee.Image:
    """Zevenbergen-Thorne general curvature on the DEM's own pixels, in 1/100 per metre.

    ``-100 * (d2z/dx2 + d2z/dy2)``, each second difference over its own squared pixel
    spacing, as :func:`pipelines.geo.terrain.curvature` computes it. Every DEM offered is
    geographic (1 arc-second or finer in latitude, the same or coarser in longitude), so
    its pixels are not square in metres (at 28 N a 1" pixel is 27.3 m by 30.9 m); the
    4-neighbour Laplacian over the cell area, ``(z_e + z_w + z_n + z_s - 4 z) / (dx dy)``,
    is right only for square pixels. The kernels run on the DEM's own grid (``reproject``:
    unprojected, Earth Engine would run them on the requested grid, on nearest-neighbour
    copies of the DEM's pixels); the result is then resampled bilinearly onto the request.
    """
    import ee

    native = dem.reproject(proj)
    lonlat = ee.Image.pixelLonLat().reproject(proj)
    along_x = ee.Kernel.fixed(3, 1, [[1, -2, 1]])
    along_y = ee.Kernel.fixed(1, 3, [[1], [-2], [1]])
    dx = _pixel_step_m(lonlat, ee.Kernel.fixed(3, 1, [[-1, 0, 1]]))
    dy = _pixel_step_m(lonlat, ee.Kernel.fixed(1, 3, [[-1], [0], [1]]))
    d2x = native.convolve(along_x).divide(dx.multiply(dx))
    d2y = native.convolve(along_y).divide(dy.multiply(dy))
    return d2x.add(d2y).multiply(-100).resample("bilinear")


def build_image(config: EEConfig, bands: Sequence[str]) -> ee.Image:
    """Build the Earth Engine image of ``bands`` (run on the launcher, once).

    Sentinel-2 bands are a cloud-masked composite over ``[start, end)`` in reflectance
    0-1; terrain bands come from the chosen DEM (metres, degrees, 1/100 per metre).
    Masked pixels hold :data:`NODATA`; every band is float32, in the order of ``bands``.

    Raises:
        BandError: a band is unknown or not computable by this source.
    """
    import ee

    names = bandreg.resolve(bands)
    bandreg.require(AVAILABLE_BANDS, names, "Earth Engine source")
    optical = [n for n in names if n in bandreg.SENTINEL2_BANDS]
    terrain = [n for n in names if n in bandreg.TERRAIN_BANDS]
    parts = []
    if optical:
        parts.append(_sentinel2(config, optical))
    if terrain:
        parts.append(_terrain(config, terrain))
    image = ee.Image.cat(parts).select(list(names))
    return image.toFloat().unmask(NODATA, False).toFloat()


def to_json(image: Any) -> str:
    """The JSON serialisation of an Earth Engine object (what the pickled source carries)."""
    import ee

    return ee.serializer.toJSON(image)
