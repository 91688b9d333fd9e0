"""What world to generate: :class:`WorldConfig` and the ``--years`` syntax."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.errors import ConfigError
from pipelines.geo.grid import utm_epsg
from pipelines.options.fields import option


def parse_years(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parse ``"2013-2019"``, ``"2013,2015,2017"`` or ``"2014-2016,2019"`` into years."""
    if not isinstance(text, str):
        return tuple(int(y) for y in text)
    years: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{4})\s*(?:-\s*(\d{4}))?", part)
        if not m:
            raise ConfigError(f"Bad years {text!r}: expected e.g. '2013-2019' or "
                              f"'2013,2015,2017'.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ConfigError(f"Bad year range {part!r}: the end comes before the start.")
        years.extend(range(a, b + 1))
    return tuple(sorted(set(years)))


@dataclass(frozen=True)
class WorldConfig:
    """What to generate.

    Attributes:
        seed: Random seed (>= 0); the same seed and configuration give the same world.
        size_km: Side of the square world in kilometres.
        pixel_size: Pixel size in metres (the grid is UTM, aligned to whole metres).
        years: The years to render (one image and one inventory each).
        event_year: Year of the earthquake that triggers many landslides (one of ``years``).
        clouds: Add clouds and their shadows to the images.
        center_lon: Longitude of the world's centre (picks the UTM zone).
        center_lat: Latitude of the world's centre.
    """

    seed: int = option(42, "Random seed (default %(default)s).")
    size_km: float = option(12.0, "Side of the square world in km (default %(default)s).",
                            units="km")
    pixel_size: float = option(10.0, "Metres (default %(default)s).", units="m")
    years: tuple[int, ...] = option(tuple(range(2013, 2020)), "Year range, e.g. 2013-2019.",
                                    parse=parse_years)
    event_year: int = option(2015, "Year of the earthquake that triggers many landslides "
                             "(default %(default)s).")
    clouds: bool = option(True, "Add clouds and cloud shadows (default on).")
    center_lon: float = 85.35
    center_lat: float = 28.15

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.pixel_size, (int, float)) or not 2.0 <= self.pixel_size <= 60.0:
            raise ConfigError(f"pixel_size must be between 2 and 60 metres, got "
                              f"{self.pixel_size!r} (Sentinel-2 is 10 m).")
        if not isinstance(self.size_km, (int, float)) or not math.isfinite(self.size_km):
            raise ConfigError(f"size_km must be a number, got {self.size_km!r}.")
        n = self.size_px
        if n < 64:
            raise ConfigError(f"size_km={self.size_km} at {self.pixel_size} m is {n} pixels: "
                              f"the world needs at least 64 pixels a side (e.g. --size-km 2).")
        if n > 8192:
            raise ConfigError(f"size_km={self.size_km} at {self.pixel_size} m is {n} pixels a "
                              f"side, more than 8192: use a smaller world or coarser pixels.")
        years = tuple(int(y) for y in self.years)
        if not years:
            raise ConfigError("years is empty: give at least one year, e.g. 2013-2019.")
        if list(years) != sorted(set(years)):
            raise ConfigError(f"years must be increasing and unique, got {list(years)}.")
        if years[0] < 1950 or years[-1] > 2100:
            raise ConfigError(f"years {years[0]}-{years[-1]} are outside 1950-2100.")
        object.__setattr__(self, "years", years)
        if self.event_year not in years:
            raise ConfigError(f"event_year {self.event_year} is not one of the years "
                              f"{years[0]}-{years[-1]}; choose a year inside the range.")
        if not (-180.0 < self.center_lon < 180.0 and -80.0 < self.center_lat < 84.0):
            raise ConfigError(f"Centre ({self.center_lon}, {self.center_lat}) is outside the "
                              f"UTM domain (longitude -180..180, latitude -80..84).")

    @property
    def size_px(self) -> int:
        """Pixels per side."""
        return round(self.size_km * 1000.0 / self.pixel_size)

    @property
    def epsg(self) -> int:
        """EPSG code of the world's UTM zone."""
        return utm_epsg(self.center_lon, self.center_lat)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["years"] = list(self.years)
        return d
