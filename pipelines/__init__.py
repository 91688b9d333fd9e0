"""landslide-mapper: data pipelines (export, predict, compare, scan) and geo building blocks."""

__version__ = "0.1.0"
