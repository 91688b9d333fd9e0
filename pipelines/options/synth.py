"""The options of ``landslides synth``: where to write the world and the world itself.

The world's options are the fields of :class:`pipelines.synth.config.WorldConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.options.fields import nested, option
from pipelines.synth.config import WorldConfig


@dataclass(frozen=True)
class SynthOptions:
    """What ``landslides synth`` generates, and where."""

    out: str = option(help="Output folder (local or gs://).")
    config: WorldConfig = nested(WorldConfig, default_factory=WorldConfig)


__all__ = ["SynthOptions"]
