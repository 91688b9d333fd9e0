"""What Dataflow workers get from ``--setup_file``, checked in fresh virtual environments.

A Dataflow launch with ``--setup_file`` builds an sdist of the project (Beam's
``Stager._build_setup_package``, called here as the launcher calls it) and each worker
``pip install``s it: the package and its ``install_requires``, no extras. So:

* an export worker has no TensorFlow (it is in the ``tf`` extra), and export must run
  without it: a fresh venv holding exactly the sdist and the distributions that
  ``install_requires`` resolves to runs a real export on two worker processes;
* a predict worker needs TensorFlow: with the ``tf`` extra's distributions added, the
  same sdist runs a real sweep; without them the CLI says what to install.

The fresh venvs are built offline: ``python -m venv`` (no system site-packages), the
sdist installed with ``pip install --no-deps --no-index``, and the dependencies made
visible through a ``.pth`` folder of links to the files of exactly the distributions
that ``install_requires`` (plus extras) resolves to, following each distribution's own
requirements and markers from this environment's metadata (these are the versions of
requirements.txt). ``pip check`` then confirms the set is complete.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines import cli

ROOT = Path(__file__).resolve().parents[1]


def _modules(*packages: str) -> list[str]:
    """Every module of the source tree's ``packages`` (and their subpackages)."""
    out = []
    for pkg in packages:
        path = ROOT.joinpath(*pkg.split("."))
        if path.with_suffix(".py").is_file():
            out.append(pkg)
            continue
        out.append(pkg)
        out += [m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{pkg}.")]
    return sorted(out)


#: What export and Landslide4Sense import workers run: sources, geo, cutting, shards
EXPORT_WORKER_MODULES = _modules(
    "pipelines.export", "pipelines.sources", "pipelines.geo", "pipelines.synth",
    "pipelines.shards", "pipelines.transforms.background", "pipelines.transforms.tagged",
    "pipelines.import_l4s", "pipelines.progress", "pipelines.fsio", "model.schema",
    "model.example_proto", "model.errors")
#: What predict workers run besides: the sweep's DoFns, the model handler, the artifact
PREDICT_WORKER_MODULES = sorted({*EXPORT_WORKER_MODULES, *_modules(
    "pipelines.predict", "pipelines.transforms", "model.artifact", "model.unet",
    "model.losses", "model.metrics")})

BLOCK_TENSORFLOW = """
import importlib, sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTensorFlow())
"""

IMPORT_ALL = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"failed": failed, "tensorflow": "tensorflow" in sys.modules,
                  "pipelines": importlib.import_module("pipelines").__file__}))
"""


def _clean_env() -> dict[str, str]:
    """This environment without the variables that point Python at this checkout."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
            and not k.startswith("PIP_")}


def _import_all(python: str, modules: list[str], prelude: str = "",
                cwd: Path | None = None) -> dict:
    res = subprocess.run([python, "-c", prelude + IMPORT_ALL, json.dumps(modules)],
                         capture_output=True, text=True, env=_clean_env() if cwd else None,
                         cwd=cwd, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- fast checks
def test_export_worker_modules_import_without_tensorflow():
    assert "pipelines.export.cut" in EXPORT_WORKER_MODULES
    assert "pipelines.sources.earthengine.pixels" in EXPORT_WORKER_MODULES
    got = _import_all(sys.executable, EXPORT_WORKER_MODULES, BLOCK_TENSORFLOW)
    assert got["failed"] == {}
    assert got["tensorflow"] is False


def test_predict_worker_modules_need_tensorflow_and_import_with_it():
    import importlib

    assert "pipelines.predict.pipeline" in PREDICT_WORKER_MODULES
    for name in PREDICT_WORKER_MODULES:  # here, where the tf extra is installed
        importlib.import_module(name)
    without = _import_all(sys.executable, PREDICT_WORKER_MODULES, BLOCK_TENSORFLOW)
    # the model's modules are the ones that need it (keras picks TensorFlow as backend)
    assert set(without["failed"]) >= {"model.unet"}
    assert all("tensorflow" in why for why in without["failed"].values())
    assert not set(without["failed"]) & set(EXPORT_WORKER_MODULES)


def _dataflow(*extra: str) -> list[str]:
    return ["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1",
            "--temp_location", "gs://b/tmp", *extra]


def test_dataflow_predict_workers_get_the_launchers_tensorflow():
    from apache_beam.options.pipeline_options import SetupOptions

    from pipelines.beam_util import pipeline_options

    pins = dict(ln.split("==") for ln in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    export = pipeline_options(_dataflow(), "landslides-export").view_as(SetupOptions)
    assert export.setup_file == str(ROOT / "setup.py") and export.requirements_file is None
    predict = pipeline_options(_dataflow(), "landslides-predict",
                               runs_model=True).view_as(SetupOptions)
    assert predict.setup_file == str(ROOT / "setup.py")
    req = Path(predict.requirements_file).read_text().split()
    assert req == [f"tensorflow-cpu=={pins['tensorflow_cpu']}"]
    image = pipeline_options(_dataflow("--sdk_container_image", "r/landslides:1"),
                             "landslides-predict", runs_model=True).view_as(SetupOptions)
    assert image.requirements_file is None  # the worker image holds TensorFlow
    direct = pipeline_options([], "landslides-predict", runs_model=True)
    assert direct.view_as(SetupOptions).requirements_file is None


# ----------------------------------------------------------------------------- fresh venvs
def _install_requires() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == \
                "INSTALL_REQUIRES":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no INSTALL_REQUIRES")


def _extra(name: str) -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "setup")
    extras = next(k.value for k in call.keywords if k.arg == "extras_require")
    return list(ast.literal_eval(extras)[name])


def _resolve(requirements: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions ``requirements`` need, following their requirements."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    extras_of: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        assert name in installed, f"{req} is required but not installed here"
        dist = installed[name]
        assert req.specifier.contains(dist.version, prereleases=True), (req, dist.version)
        seen = extras_of.get(name)
        if seen is not None and set(req.extras) <= seen:
            continue
        extras_of[name] = (seen or set()) | set(req.extras)
        envs = [{"extra": e} for e in ["", *sorted(extras_of[name])]]
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return {name: installed[name] for name in extras_of}


def _link_distributions(dists: dict[str, md.Distribution], site: Path) -> None:
    """Links in ``site`` to the installed files of exactly ``dists``."""
    owners: dict[str, set[str]] = {}
    for dist in md.distributions():
        for f in dist.files or []:
            owners.setdefault(f.parts[0], set()).add(canonicalize_name(dist.metadata["Name"]))
    for dist in dists.values():
        for f in dist.files or []:
            top = f.parts[0]
            if top == "..":  # scripts and data outside site-packages
                continue
            if owners[top] <= set(dists):  # a folder of these distributions only
                dst, src = site / top, Path(str(dist.locate_file(top)))
            else:  # shared with others (the google namespace): file by file
                dst, src = site / f, Path(str(dist.locate_file(f)))
            if dst.exists() or dst.is_symlink() or not src.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist a Dataflow launch stages, built by Beam from the tracked files."""
    from apache_beam.runners.portability.stager import Stager

    src = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("sdist")
    return Path(Stager._build_setup_package(str(src / "setup.py"), str(out)))


def _fresh_venv(root: Path, sdist: Path, requirements: list[str]) -> Path:
    """A venv with the sdist installed and only what ``requirements`` resolve to."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)],  # type: ignore[attr-defined]
                   check=True, timeout=120)
    python = root / "bin" / "python"
    site = root / "deps"
    # setuptools and wheel: what pip builds the sdist with (--no-build-isolation)
    _link_distributions(_resolve([*requirements, "setuptools", "wheel"]), site)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                              "get_paths()['purelib'])"], capture_output=True, text=True,
                             check=True, env=_clean_env()).stdout.strip()
    Path(purelib, "deps.pth").write_text(f"{site}\n")
    pip = [sys.executable, "-m", "pip", "--isolated", "--python", str(python)]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--no-build-isolation",
                    str(sdist)], check=True, capture_output=True, env=_clean_env(),
                   timeout=300)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, env=_clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    return root / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "landslides"), *args], capture_output=True,
                          text=True, env=_clean_env(), cwd=cwd, timeout=600)


@pytest.mark.slow
def test_an_export_worker_from_setup_py_runs_without_tensorflow(sdist, tmp_path):
    from tests.export import test_export as ex
    from tests.scenes import make_export_scene

    bin_dir = _fresh_venv(tmp_path / "venv", sdist, _install_requires())
    got = _import_all(str(bin_dir / "python"), EXPORT_WORKER_MODULES, cwd=tmp_path)
    assert got["failed"] == {} and got["tensorflow"] is False
    assert got["pipelines"].startswith(str(tmp_path / "venv"))  # the installed package
    probe = subprocess.run([str(bin_dir / "python"), "-c", "import tensorflow"],
                           capture_output=True, text=True, env=_clean_env(), cwd=tmp_path)
    assert "No module named 'tensorflow'" in probe.stderr

    (tmp_path / "scene").mkdir()
    scene = make_export_scene(tmp_path / "scene")
    fresh, here = tmp_path / "fresh", tmp_path / "here"
    res = _run(bin_dir, [*ex._export_args(scene, fresh, "--negative-fraction", "0.5"),
                         "--direct_running_mode", "multi_processing",
                         "--direct_num_workers", "2"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert cli.main(ex._export_args(scene, here, "--negative-fraction", "0.5")) == 0
    shards = sorted(p.relative_to(here) for p in here.rglob("*.tfrecord.gz"))
    assert shards and shards == sorted(p.relative_to(fresh) for p in fresh.rglob("*.tfrecord.gz"))
    for rel in shards:  # the same records, byte for byte, as an export with TensorFlow
        assert (fresh / rel).read_bytes() == (here / rel).read_bytes()

    # predict needs TensorFlow: the CLI says what to install
    res = _run(bin_dir, ["predict", "--model", str(tmp_path), "--out", str(tmp_path / "p"),
                         "--source", "geotiff", "--images", "x.tif", "--aoi", "0,0,1,1",
                         "--start", "2020-01-01", "--end", "2020-02-01"], cwd=tmp_path)
    assert res.returncode == 2 and "pip install 'landslide-mapper[tf]'" in res.stderr


@pytest.mark.slow
def test_a_predict_worker_with_the_tf_extra_runs_a_sweep(sdist, tmp_path):
    from tests.scenes import make_predict_scene, predict_args

    bin_dir = _fresh_venv(tmp_path / "venv", sdist, [*_install_requires(), *_extra("tf")])
    got = _import_all(str(bin_dir / "python"), PREDICT_WORKER_MODULES, cwd=tmp_path)
    assert got["failed"] == {} and got["tensorflow"] is True

    (tmp_path / "scene").mkdir()
    scene = make_predict_scene(tmp_path / "scene")
    fresh, here = tmp_path / "fresh", tmp_path / "here"
    res = _run(bin_dir, predict_args(scene, fresh), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert cli.main(predict_args(scene, here)) == 0
    run = json.loads((fresh / "run.json").read_text())
    assert run["status"] == "ok" and run["counts"]["chunks_computed"] == 16
    for name in ("prob.tif", "mask.tif"):
        with rasterio.open(fresh / "mosaic" / name) as a, \
                rasterio.open(here / "mosaic" / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
