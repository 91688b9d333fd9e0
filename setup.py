"""Packaging for landslide-mapper.

Installs the ``pipelines`` and ``model`` packages and the ``landslides`` console script.
Also Dataflow's ``--setup_file``: the launcher builds an sdist of it and every worker
``pip install``s that, with ``install_requires`` and no extras. Those are enough for export
(patches are encoded without TensorFlow); stages that run the model (predict, scan) need
the ``tf`` extra on their workers, which ``pipelines.beam_util.ship_tensorflow`` passes to
Dataflow as a ``--requirements_file``, or the worker images in infra/ hold it.
tests/test_packaging.py installs this file in fresh venvs the way a worker does.
"""

from pathlib import Path

from setuptools import find_packages, setup

# Runtime requirements, kept loose enough for Dataflow's worker images; the exact pins
# used locally and in CI live in requirements.txt.
INSTALL_REQUIRES = [
    "apache-beam[gcp]>=2.77,<3",
    "earthengine-api>=1.7.35,<1.8",
    "google-cloud-storage>=3.17,<4",
    "keras>=3.15,<4",
    "rasterio>=1.4.4,<1.5",
    "rio-cogeo>=7.0,<8",
    "geopandas>=1.2,<2",
    "pyogrio>=0.10",
    "shapely>=2.0",
    "pyproj>=3.6",
    "pyarrow>=15",
    "h5py>=3.10",
    # ISA-L gzip for shards (3.5x zlib); pipelines.shards falls back to gzip without it
    "isal>=1.6",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "pyyaml>=6",
    "tqdm>=4.66",
    "pystac>=1.10",
]

setup(
    name="landslide-mapper",
    version="0.1.0",
    description="Distributed, cloud-native landslide mapping from satellite imagery.",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pipelines", "pipelines.*", "model", "model.*"]),
    package_data={"pipelines": ["data/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # TensorFlow: to train and predict (launcher and workers); export runs without it.
        "tf": ["tensorflow-cpu>=2.21,<2.22"],
        # Beam's Dask runner (--runner dask) on an existing dask.distributed cluster.
        "dask": ["apache-beam[dask]>=2.77,<3"],
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "mypy", "gcp-storage-emulator"],
    },
    entry_points={"console_scripts": ["landslides=pipelines.cli:main"]},
)
