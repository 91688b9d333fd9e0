from __future__ import annotations

import pytest

from pipelines.errors import BandError
from pipelines.geo import bands


def test_registry_has_the_twelve_l2a_bands_and_terrain():
    assert len(bands.SENTINEL2_BANDS) == 12
    assert "B10" not in bands.SENTINEL2_BANDS and "B8A" in bands.SENTINEL2_BANDS
    for name in bands.SENTINEL2_BANDS:
        b = bands.get(name)
        assert b.unit == "reflectance" and b.scale == 1e-4 and b.wavelength_nm
    assert bands.get("slope").unit == "degree"
    assert bands.get("DEM").unit == "m"


def test_aliases_and_case():
    assert bands.resolve(["b04", "NIR", "elevation", "Slope"]) == ("B4", "B8", "DEM", "slope")


def test_unknown_band_suggests():
    with pytest.raises(BandError, match=r"'B13'.*Did you mean"):
        bands.canonical("B13")
    with pytest.raises(BandError, match="more than once"):
        bands.resolve(["B4", "red"])
    with pytest.raises(BandError, match="No bands"):
        bands.resolve([])


def test_require_names_missing_bands():
    with pytest.raises(BandError, match=r"lacks band\(s\) slope, DEM"):
        bands.require(["B2", "B3"], ["B2", "slope", "DEM"], "model")
    bands.require(["B2", "B3"], ["B3"])
