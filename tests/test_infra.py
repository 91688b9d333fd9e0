"""Consistency checks of infra/: what can be verified without Google Cloud or a Docker engine.

Files parse; the Flex Template parameters, the Cloud Run job and the Vertex AI job produce
command lines that the real ``landslides`` parser accepts; request bodies and job specs
use only fields of the Google APIs' published schemas (the discovery documents shipped
inside google-api-python-client); the Himalaya AOI is a valid multi-zone region; the
Dockerfiles copy files that exist and pin what requirements.txt pins.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
import zoneinfo
from pathlib import Path

import numpy as np
import pytest
import shapely
import yaml
from shapely.geometry import Point, shape

from pipelines import cli
from pipelines.options.commands import COMMANDS
from pipelines.options.fields import from_namespace
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DISCOVERY = Path(importlib.util.find_spec("googleapiclient").origin).parent / \
    "discovery_cache" / "documents"


flex_main = load_script("infra/flex_main.py", register=True)


def _subparser(command: str):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


def _schemas(doc: str) -> dict:
    return json.loads((DISCOVERY / doc).read_text())["schemas"]


def _check_schema(obj, schema: dict, schemas: dict, where: str) -> None:
    """Every key of ``obj`` is a property of ``schema`` (recursively), enums respected."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"]]
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        assert isinstance(obj, dict), f"{where}: expected an object, got {obj!r}"
        for k, v in obj.items():
            assert k in schema["properties"], (
                f"{where}.{k} is not a field; fields: {sorted(schema['properties'])}")
            _check_schema(v, schema["properties"][k], schemas, f"{where}.{k}")
    elif kind == "object" and "additionalProperties" in schema:
        assert isinstance(obj, dict), where
        for k, v in obj.items():
            _check_schema(v, schema["additionalProperties"], schemas, f"{where}.{k}")
    elif kind == "array":
        assert isinstance(obj, list), f"{where}: expected a list, got {obj!r}"
        for i, v in enumerate(obj):
            _check_schema(v, schema["items"], schemas, f"{where}[{i}]")
    elif kind == "string" and "enum" in schema:
        assert obj in schema["enum"], f"{where}={obj!r} is not one of {schema['enum']}"
    elif kind == "integer":
        assert isinstance(obj, int) or re.fullmatch(r"-?\d+", str(obj)), f"{where}={obj!r}"
    elif kind == "boolean":
        assert isinstance(obj, bool), f"{where}={obj!r}"


# --------------------------------------------------------------------------- parsing
def test_every_config_file_parses():
    files = [p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml", ".json", ".geojson")]
    assert len(files) >= 7
    for p in files:
        text = p.read_text()
        data = json.loads(text) if p.suffix in (".json", ".geojson") else yaml.safe_load(text)
        assert data, p


def test_template_metadata_is_a_dataflow_template_metadata():
    meta = json.loads((INFRA / "scan-template-metadata.json").read_text())
    _check_schema(meta, {"$ref": "TemplateMetadata"}, _schemas("dataflow.v1b3.json"),
                  "metadata")
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names))
    for p in meta["parameters"]:
        assert p["label"] and len(p["helpText"]) > 10
        for rx in p.get("regexes", []):
            re.compile(rx)
    required = [p["name"] for p in meta["parameters"] if not p.get("isOptional")]
    assert required == ["command"]


# --------------------------------------------------------------------------- flex_main
def test_every_template_parameter_maps_to_a_cli_option():
    meta = json.loads((INFRA / "scan-template-metadata.json").read_text())
    names = {p["name"] for p in meta["parameters"]}
    assert names == set(flex_main.PARAMS) | {"command"}
    choices = next(p for p in meta["parameters"] if p["name"] == "command")["regexes"][0]
    for command in flex_main.COMMANDS:
        assert re.fullmatch(choices, command)
    for name, param in flex_main.PARAMS.items():
        for command in param.commands:
            options = _subparser(command)._option_string_actions
            assert param.flag in options, f"{name}: landslides {command} has no {param.flag}"
            if param.kind == "toggle":
                assert "--no-" + param.flag[2:] in options
            if param.kind == "switch":
                assert options[param.flag].nargs == 0, f"{name} must be a flag"


def _launch(params: dict[str, str], meta: dict) -> list[str]:
    """The argv the template launcher gives flex_main.py, checked against the regexes."""
    rx = {p["name"]: p.get("regexes", []) for p in meta["parameters"]}
    for k, v in params.items():
        for r in rx[k]:
            assert re.fullmatch(r, v), f"{k}={v!r} does not match the template's {r!r}"
    return [f"--{k}={v}" for k, v in params.items()]


BEAM = ["--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp", "--job_name=landslides-x",
        "--template_location=gs://my-bucket/staging/template_launches/1/job_object"]


@pytest.mark.parametrize("params,expect", [
    ({"command": "scan", "config": "gs://my-bucket/configs/scan-himalaya.yaml",
      "periods": "2021,2022"},
     {"config": "gs://my-bucket/configs/scan-himalaya.yaml", "periods": "2021,2022",
      "dry_run": False}),
    ({"command": "predict", "model": "gs://my-bucket/models/v1",
      "out": "gs://my-bucket/sweeps/x", "aoi": "gs://my-bucket/aoi/rasuwa.geojson",
      "start": "2020-06-01", "end": "2020-10-01", "source": "geotiff",
      "images": "gs://my-bucket/s2/a.tif,gs://my-bucket/s2/b.tif", "chunk_size": "1024",
      "threshold": "0.4", "stac": "false", "large_model": "true", "ee_high_volume": "false"},
     {"model": "gs://my-bucket/models/v1", "images": ["gs://my-bucket/s2/a.tif",
                                                      "gs://my-bucket/s2/b.tif"],
      "chunk_size": 1024, "threshold": 0.4, "stac": False, "large_model": True,
      "ee_high_volume": False, "kind": "geotiff"}),
    ({"command": "export", "out": "gs://my-bucket/shards/h", "aoi": "85.0,27.5,86.0,28.5",
      "inventory": "gs://my-bucket/inv.gpkg", "start": "2016-01-01", "end": "2017-01-01",
      "source": "earthengine", "ee_project": "my-ee-project", "bands": "B2,B3,B4,B8,slope",
      "patch_size": "128", "negative_fraction": "0.25", "ee_dem": "glo30"},
     {"aoi": "85.0,27.5,86.0,28.5", "patch_size": 128, "negative_fraction": 0.25,
      "ee_project": "my-ee-project", "kind": "earthengine", "bands": "B2,B3,B4,B8,slope"}),
])
def test_flex_launch_argv_is_accepted_by_the_cli(params, expect):
    meta = json.loads((INFRA / "scan-template-metadata.json").read_text())
    got, beam = flex_main.parse_launch_args(_launch(params, meta) + BEAM)
    assert got == params
    assert beam == BEAM
    argv = flex_main.build_argv(got, beam)
    args, extra = cli.build_parser().parse_known_args(argv)
    assert args.command == params["command"]
    assert extra == BEAM  # Beam options pass through untouched, in order
    assert COMMANDS[args.command].beam
    for k, v in expect.items():
        assert getattr(args, k) == v, k
    # and they make a valid options object of the command
    options = from_namespace(COMMANDS[args.command].options_class(), args)
    if params["command"] != "scan":
        assert options.source["kind"] == params["source"]


def test_flex_main_refuses_what_the_command_cannot_take(capsys):
    with pytest.raises(ValueError, match="model.*does not apply to scan"):
        flex_main.build_argv({"command": "scan", "config": "gs://b/c.yaml",
                              "model": "gs://b/m"})
    with pytest.raises(ValueError, match="command='train'"):
        flex_main.build_argv({"command": "train"})
    with pytest.raises(ValueError, match="large_model='maybe'"):
        flex_main.build_argv({"command": "predict", "large_model": "maybe"})
    assert flex_main.main(["--command=deploy"]) == 2
    assert "use one of scan, predict, export" in capsys.readouterr().err


# --------------------------------------------------------------------------- Vertex AI
@pytest.mark.parametrize("name,image,accelerator", [
    ("vertex-train.yaml", "${TRAIN_IMAGE}", "NVIDIA_"),
    ("vertex-train-tpu.yaml", "${TPU_TRAIN_IMAGE}", "TPU"),
])
def test_vertex_jobs_are_custom_job_specs_running_landslides_train(name, image, accelerator):
    spec = yaml.safe_load((INFRA / name).read_text())
    _check_schema(spec, {"$ref": "GoogleCloudAiplatformV1CustomJobSpec"},
                  _schemas("aiplatform.v1.json"), "spec")
    (pool,) = spec["workerPoolSpecs"]
    machine = pool["machineSpec"]
    container = pool["containerSpec"]
    assert container["imageUri"] == image
    args = cli.build_parser().parse_args(container["args"])  # exits on a bad option
    assert args.command == "train"
    assert args.data.startswith("gs://") and args.out.startswith("gs://")
    assert (ROOT / args.config).is_file()  # WORKDIR /app holds model/ (Dockerfile.train*)
    config = yaml.safe_load((ROOT / args.config).read_text())
    assert "bands" in config
    if accelerator == "TPU":  # a TPU VM machine type with its slice, TPUStrategy on it
        assert machine["machineType"].startswith("ct") and "x" in machine["tpuTopology"]
        assert (args.strategy, args.tpu) == ("tpu", "local")
        chips = np.prod([int(n) for n in machine["tpuTopology"].split("x")])
        assert args.batch_size % chips == 0  # the global batch splits over the chips
    else:
        assert machine["acceleratorCount"] >= 1
        assert machine["acceleratorType"].startswith(accelerator)


# --------------------------------------------------------------------------- AOI + scans
def test_himalaya_aoi_is_a_valid_region_across_utm_zones_43_to_46():
    from pyproj import Geod

    from pipelines.geo.grid import load_region, plan_chunks

    path = INFRA / "examples" / "himalaya.geojson"
    feature = json.loads(path.read_text())["features"][0]
    raw = shape(feature["geometry"])
    assert raw.is_valid and raw.geom_type == "Polygon"
    assert "coarse" in feature["properties"]["description"]
    region = load_region(str(path))
    geom = region.geometry
    area_km2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(geom)[0]) / 1e6
    assert 3e5 < area_km2 < 1e6, area_km2
    inside = {"Nanga Parbat": (74.59, 35.24), "Everest": (86.925, 27.988),
              "Kathmandu": (85.32, 27.71), "Thimphu": (89.64, 27.47),
              "Namcha Barwa": (95.06, 29.63)}
    outside = {"Delhi": (77.2, 28.6), "Lhasa": (91.1, 29.65), "Dhaka": (90.4, 23.8),
               "Kabul": (69.2, 34.5)}
    for name, xy in inside.items():
        assert geom.contains(Point(xy)), name
    for name, xy in outside.items():
        assert not geom.contains(Point(xy)), name
    chunks = plan_chunks(region, pixel_size=1000.0, chunk_size=64, halo=0)
    zones = {c.key.epsg for c in chunks}
    assert zones == {32643, 32644, 32645, 32646}
    covered = sum(shapely.from_wkb(c.region_wkb).area for c in chunks) / 1e6
    assert covered == pytest.approx(area_km2, rel=0.02)  # UTM vs geodesic areas


def test_example_scan_configs_validate():
    from pipelines.scan import ScanConfig

    him = ScanConfig.from_yaml(str(INFRA / "examples" / "scan-himalaya.yaml"))
    assert him.source["kind"] == "earthengine"
    assert him.source["dem"] == "glo30"  # an Earth Engine DEM name, not a path to resolve
    assert Path(him.region) == INFRA / "examples" / "himalaya.geojson"
    assert him.model.startswith("gs://") and him.out.startswith("gs://")
    last = dt.date.today().year - 1
    assert [p.name for p in him.periods] == [str(y) for y in range(2016, last + 1)]
    assert all(p.end == f"{int(p.name) + 1}-01-01" for p in him.periods)
    for p in him.periods:  # every period builds a valid sweep and comparison
        assert him.predict_config(p).chunk_size == 512
        assert him.compare_config(p).predicted is None  # statistics of the prediction
    syn = ScanConfig.from_yaml(str(INFRA / "examples" / "scan-synthetic.yaml"))
    assert syn.source == {"kind": "synthetic", "world": str(ROOT / "demo-out" / "world")}
    assert syn.reference_for(syn.periods[0]) == str(
        ROOT / "demo-out" / "world" / f"inventory_{syn.periods[0].year}.gpkg")


def test_schedules_are_well_formed():
    doc = yaml.safe_load((INFRA / "schedule.yaml").read_text())
    names = [s["name"] for s in doc["schedules"]]
    assert len(names) == len(set(names))
    for s in doc["schedules"]:
        assert re.fullmatch(r"[a-z][-a-z0-9]{0,62}", s["name"])  # Cloud Run job names too
        assert s["target"] in ("cloud-run-job", "flex-template")
        assert (INFRA / "examples" / Path(s["config"]).name).is_file()
        fields = s["cron"].split()
        assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields)
        zoneinfo.ZoneInfo(s["time_zone"])
    assert int(doc["dataflow"]["max_num_workers"]) > 0


# --------------------------------------------------------------------------- images
# The Dockerfiles and their pins against requirements.txt: tests/test_images.py.


# --------------------------------------------------------------------------- deploy.sh
def test_deploy_script_commands_are_accepted_by_the_cli_and_the_apis(tmp_path):
    """Run deploy.sh with a gcloud that records its arguments, then check them."""
    log = tmp_path / "gcloud.jsonl"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(  # records argv and the text of the local YAML files it is given
        f"#!{sys.executable}\nimport json, os, sys\n"
        "files = {a: open(a).read() for a in sys.argv[1:] + [a.split('=', 1)[-1] for a in "
        "sys.argv[1:]] if a.endswith('.yaml') and os.path.isfile(a)}\n"
        f"open({str(log)!r}, 'a').write(json.dumps([sys.argv[1:], files]) + '\\n')\n"
        "sys.exit(1 if 'describe' in sys.argv else 0)\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "PROJECT": "proj-x", "REGION": "us-central1", "BUCKET": "bkt", "TAG": "t1",
           "PYTHON": sys.executable}
    subprocess.run(["bash", "-n", str(INFRA / "deploy.sh")], check=True)
    res = subprocess.run(["bash", str(INFRA / "deploy.sh"), "setup", "configs", "scans",
                          "train"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    calls = [argv for argv, _ in records]
    texts = {path: text for _, files in records for path, text in files.items()}
    image = "us-central1-docker.pkg.dev/proj-x/landslides/landslides:t1"

    # the Cloud Run job runs `landslides scan ...` with Beam options Beam knows
    deploy = next(c for c in calls if c[:3] == ["run", "jobs", "deploy"])
    assert deploy[deploy.index("--command") + 1] == "landslides"
    job_args = next(a for a in deploy if a.startswith("--args=")).split("=", 1)[1].split(",")
    args, beam = cli.build_parser().parse_known_args(job_args)
    assert args.command == "scan" and args.config == "gs://bkt/configs/scan-himalaya.yaml"
    from apache_beam.options.pipeline_options import PipelineOptions

    known = set(PipelineOptions([]).get_all_options(drop_default=False))
    flags = [a[2:] for a in beam if a.startswith("--")]
    assert flags and all(f in known for f in flags), set(flags) - known
    opts = PipelineOptions(beam).get_all_options()
    assert opts["runner"] == "DataflowRunner" and opts["sdk_container_image"] == image

    # the schedules: a Cloud Run job trigger and a Flex Template launch
    creates = [c for c in calls if c[:4] == ["scheduler", "jobs", "create", "http"]]
    assert {c[4] for c in creates} == {"landslides-scan-himalaya",
                                       "landslides-scan-himalaya-flex"}
    flex = next(c for c in creates if c[4].endswith("-flex"))
    body = json.loads(flex[flex.index("--message-body") + 1])
    _check_schema(body, {"$ref": "LaunchFlexTemplateRequest"},
                  _schemas("dataflow.v1b3.json"), "launch")
    argv = flex_main.build_argv(body["launchParameter"]["parameters"])
    assert cli.build_parser().parse_args(argv).command == "scan"
    assert body["launchParameter"]["environment"]["sdkContainerImage"] == image
    paused = [c[3] for c in calls if c[:3] == ["scheduler", "jobs", "pause"]]
    assert paused == ["landslides-scan-himalaya-flex"]

    # configs are uploaded with the placeholders filled in, and still validate
    from pipelines.scan import ScanConfig

    cp = next(c for c in calls if c[:2] == ["storage", "cp"] and c[-1].endswith(".yaml"))
    assert cp[-1] == "gs://bkt/configs/scan-himalaya.yaml"
    uploaded = yaml.safe_load(texts[cp[2]])
    assert uploaded["model"] == "gs://bkt/models/himalaya-v1"
    assert uploaded["source"]["project"] == "proj-x"
    assert not [ln for ln in texts[cp[2]].splitlines()
                if "YOUR_" in ln and not ln.lstrip().startswith("#")]
    scan = ScanConfig.from_dict(uploaded, "gs://bkt/configs")
    assert scan.region == "gs://bkt/configs/himalaya.geojson"
    assert ["storage", "cp", "infra/examples/himalaya.geojson", "gs://bkt/configs/"] in calls
    # the training job gets the filled-in Vertex spec
    train = next(c for c in calls if c[:3] == ["ai", "custom-jobs", "create"])
    spec_text = texts[train[train.index("--config") + 1]]
    assert "${" not in spec_text
    spec = yaml.safe_load(spec_text)
    _check_schema(spec, {"$ref": "GoogleCloudAiplatformV1CustomJobSpec"},
                  _schemas("aiplatform.v1.json"), "spec")
    pool = spec["workerPoolSpecs"][0]
    assert pool["containerSpec"]["imageUri"] == image.replace("landslides:", "landslides-trainer:")
    assert spec["serviceAccount"] == "landslides-runner@proj-x.iam.gserviceaccount.com"
    assert "gs://bkt/shards/himalaya" in pool["containerSpec"]["args"]


# --------------------------------------------------------------------------- staging
DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1",
            "--temp_location", "gs://b/tmp", "--requirements_cache", "skip"]


def _staged(opts, tmp_path: Path) -> list[str]:
    """The names of what Beam's own Stager stages for a Dataflow job with ``opts``."""
    from apache_beam.portability.api import beam_runner_api_pb2 as pb
    from apache_beam.runners.portability.stager import Stager

    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    resources = Stager.create_job_resources(opts, str(staging))
    return sorted(pb.ArtifactStagingToRolePayload.FromString(r.role_payload).staged_name
                  for r in resources)


def test_a_users_requirements_file_still_ships_the_project(tmp_path):
    """--requirements_file adds packages; the project itself still goes as --setup_file,
    or workers on Beam's stock image could not import it."""
    from apache_beam.options.pipeline_options import SetupOptions

    from pipelines.beam_util import pipeline_options

    req = tmp_path / "my-requirements.txt"
    req.write_text("tensorflow-cpu==2.21.0\n")
    opts = pipeline_options([*DATAFLOW, "--requirements_file", str(req)],
                            "landslides-predict", runs_model=True)
    setup = opts.view_as(SetupOptions)
    assert setup.setup_file == str(ROOT / "setup.py")
    assert setup.requirements_file == str(req)  # the user's, not replaced
    staged = _staged(opts, tmp_path)
    assert "workflow.tar.gz" in staged  # the project's sdist, built from setup.py
    assert "requirements.txt" in staged
    # with a worker image too, a checkout ships its setup.py (it reinstalls the same code)
    image = pipeline_options([*DATAFLOW, "--requirements_file", str(req),
                              "--sdk_container_image", "r/landslides:1"], "landslides-export")
    assert image.view_as(SetupOptions).setup_file == str(ROOT / "setup.py")


INSTALLED_CHECK = """
import json, sys
import pipelines
from apache_beam.options.pipeline_options import SetupOptions
from pipelines.beam_util import pipeline_options
from pipelines.errors import ConfigError
base = json.loads(sys.argv[1])
out = {"pipelines": pipelines.__file__}
for name, extra in json.loads(sys.argv[2]).items():
    try:
        opts = pipeline_options(base + extra, "landslides-export")
        out[name] = {"setup_file": opts.view_as(SetupOptions).setup_file}
    except ConfigError as exc:
        out[name] = {"error": str(exc)}
print(json.dumps(out))
"""


def test_an_installed_copy_without_setup_py_is_refused_on_dataflow(tmp_path):
    """As infra/Dockerfile installs it (``pip install .``, not editable): there is no
    setup.py beside the installed package, so without a worker image nothing would reach
    the workers. The launch is refused with both fixes named."""
    import shutil

    src, site = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("pipelines", "model"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-index", "--no-build-isolation", "--target", str(site),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert not (site / "setup.py").exists() and (site / "pipelines" / "beam_util.py").exists()

    cases = {"plain": [], "image": ["--sdk_container_image", "r/landslides:1"],
             "setup": ["--setup_file", str(ROOT / "setup.py")],
             "template": ["--template_location", "gs://b/staging/job"]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, json.dumps(DATAFLOW),
                          json.dumps(cases)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["pipelines"].startswith(str(site))  # the installed copy, not this checkout
    error = got["plain"]["error"]
    assert "--setup_file" in error and "--sdk_container_image" in error
    assert str(site / "pipelines") in error
    assert got["image"] == {"setup_file": None}  # the image holds the project
    assert got["setup"] == {"setup_file": str(ROOT / "setup.py")}
    # a Flex Template launch: the launch request's sdkContainerImage names the image
    assert got["template"] == {"setup_file": None}


def test_default_dataflow_job_names_are_unique_per_launch():
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from pipelines.beam_util import pipeline_options

    names = [pipeline_options(DATAFLOW, "landslides-predict", runs_model=True)
             .view_as(GoogleCloudOptions).job_name for _ in range(2)]
    assert names[0] != names[1]
    for name in names:
        assert name.startswith("landslides-predict-")
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,1022}[a-z0-9])?", name), name
    given = pipeline_options([*DATAFLOW, "--job_name", "mine"], "landslides-predict",
                             runs_model=True)
    assert given.view_as(GoogleCloudOptions).job_name == "mine"
