"""The Earth Engine expression: a cloud-masked Sentinel-2 composite and DEM terrain bands.

:func:`build_image` builds it once, on the launcher; :func:`to_json` serialises it so that
the pickled source carries a string, never an ``ee`` object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.geo import bands as bandreg
from pipelines.sources.earthengine.config import AVAILABLE_BANDS, DEMS, NODATA, EEConfig

if TYPE_CHECKING:
    import ee

__all__ = ["CLOUD_PROBABILITY_COLLECTION", "SCL_MASKED_CLASSES", "build_image", "to_json"]

#: Sentinel-2 Scene Classification classes masked by ``cloud_mask="scl"``: cloud shadow,
#: cloud medium / high probability, thin cirrus, snow or ice.
SCL_MASKED_CLASSES = (3, 8, 9, 10, 11)
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
        # Zevenbergen-Thorne total curvature, -(d2z/dx2 + d2z/dy2) * 100: the 4-neighbour
        # Laplacian over the cell area (dx * dy, in m2), on the DEM's own pixels.
        laplacian = dem.convolve(ee.Kernel.laplacian4(normalize=False))
        area = ee.Image.pixelArea().reproject(proj)
        layers["curvature"] = laplacian.divide(area).multiply(-100).resample("bilinear")
    return ee.Image.cat([layers[n].rename(n) for n in names])


def build_image(config: EEConfig, bands: Sequence[str]) -> ee.Image:
    """Build the Earth Engine image of ``bands`` (run on the launcher, once).

    Sentinel-2 bands are a cloud-masked composite over ``[start, end)`` in reflectance
    0-1; terrain bands come from the chosen DEM (metres, degrees, 1/100 m). Masked pixels
    hold :data:`NODATA`; every band is float32, in the order of ``bands``.

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
