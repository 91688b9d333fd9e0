"""The container images of infra/ against requirements.txt, without a Docker engine.

Four images (infra/README.md, "Images"): ``Dockerfile`` (Dataflow CPU worker on the Beam
SDK image, Flex Template launcher and Cloud Run scan job in one), ``Dockerfile.gpu``
(Dataflow GPU worker for predict), ``Dockerfile.train`` and ``Dockerfile.train-tpu``
(Vertex AI trainers). Each is parsed: its ``ARG`` defaults substituted, its base images
and every ``name==version`` it installs compared with the lock, the files it copies
checked to exist; Cloud Build builds every one of them and the Vertex AI specs run the
trainer images. Nothing here builds an image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILES = sorted(p.name for p in INFRA.glob("Dockerfile*"))
#: Python of setup.py/pyproject.toml, as base image tags write it
PYTHON = "3.11"
#: Pins that differ from the lock on purpose: (Dockerfile, package) -> (version, why)
KNOWN_DIFFERENCES = {
    ("Dockerfile.train-tpu", "tensorflow-tpu"): (
        "2.20.0", "the newest tensorflow-tpu release, one minor behind tensorflow-cpu"),
}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)$", line.strip())
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(3)
    return pins


class Dockerfile:
    """One Dockerfile's instructions with its ``ARG`` defaults substituted."""

    def __init__(self, name: str) -> None:
        self.name = name
        text = (INFRA / name).read_text().replace("\\\n", " ")
        raw = [ln.strip() for ln in text.splitlines()
               if ln.strip() and not ln.lstrip().startswith("#")]
        self.args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        self.lines = [re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), m.group(0)),
                             ln) for ln in raw]

    def instructions(self, kind: str) -> list[str]:
        return [ln[len(kind) + 1:] for ln in self.lines if ln.split()[0] == kind]

    def bases(self) -> list[str]:
        return [ln.split()[0] for ln in self.instructions("FROM")]

    def installed_pins(self) -> dict[str, str]:
        """``name==version`` requirements its ``RUN`` lines give pip."""
        pins = {}
        for run in self.instructions("RUN"):
            for m in re.finditer(r"""["']?([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([\w.]+)["']?""", run):
                pins[canonicalize_name(m.group(1))] = m.group(3)
        return pins

    def dropped_from_lock(self) -> list[str]:
        """Lock lines a ``grep -v`` leaves out before ``pip install -r``."""
        req = (ROOT / "requirements.txt").read_text().splitlines()
        out = []
        for run in self.instructions("RUN"):
            for pattern in re.findall(r"grep -viE '([^']+)' requirements.txt", run):
                out += [ln for ln in req if re.search(pattern, ln, re.I)]
        return out


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request) -> Dockerfile:
    return Dockerfile(request.param)


def test_the_four_images_are_there():
    assert DOCKERFILES == ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train",
                           "Dockerfile.train-tpu"]


def test_copies_files_that_exist_and_installs_the_project(dockerfile):
    copies = [ln.split()[:-1] for ln in dockerfile.instructions("COPY")
              if not ln.startswith("--from")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, not in the repo"
    copied = {s.rstrip("/") for srcs in copies for s in srcs}
    assert {"requirements.txt", "setup.py", "pipelines", "model"} <= copied
    runs = dockerfile.instructions("RUN")
    assert any(re.search(r"pip install .*-r (/tmp/)?requirements[-\w]*\.txt", r) for r in runs)
    assert any("pip install --no-cache-dir --no-deps ." in r for r in runs)


def test_base_images_are_the_locks_beam_and_python(dockerfile):
    lock = _lock()
    for base in dockerfile.bases():
        if base.startswith("apache/beam_python"):
            m = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", base)
            assert m, base
            assert m.group(1) == PYTHON and m.group(2) == lock["apache-beam"], base
        elif base.startswith("python:"):
            assert base.split(":")[1].startswith(f"{PYTHON}-"), base
        elif "template-launcher-base" in base:
            assert f"python{PYTHON.replace('.', '')}-" in base, base
        else:
            pytest.fail(f"{dockerfile.name}: unexpected base image {base}")


def test_every_pin_matches_the_lock(dockerfile):
    lock = _lock()
    pins = dockerfile.installed_pins()
    for name, version in pins.items():
        known = KNOWN_DIFFERENCES.get((dockerfile.name, name))
        if known:
            assert version == known[0], f"{dockerfile.name} {name}: {known[1]}"
            continue
        # the full tensorflow wheel (GPU) stands for the lock's tensorflow-cpu
        want = lock.get(name) or (lock["tensorflow-cpu"] if name == "tensorflow" else None)
        assert want is not None, f"{dockerfile.name} installs {name}, which the lock lacks"
        assert version == want, f"{dockerfile.name}: {name}=={version}, the lock has {want}"
    for arg, value in dockerfile.args.items():  # *_VERSION args are pins too
        if arg == "BEAM_VERSION":
            assert value == lock["apache-beam"]
        elif arg == "TF_VERSION":
            assert value == lock["tensorflow-cpu"]


def test_images_that_swap_tensorflow_drop_only_the_cpu_wheel(dockerfile):
    dropped = dockerfile.dropped_from_lock()
    pins = dockerfile.installed_pins()
    tf_wheels = {"tensorflow", "tensorflow-tpu"} & set(pins)
    if not tf_wheels:  # the CPU images install the lock as it is
        assert dropped == []
        return
    assert len(dropped) == 1 and re.match(r"tensorflow[-_]cpu==", dropped[0], re.I), dropped
    assert len(tf_wheels) == 1


def test_gpu_worker_is_a_beam_worker_with_cuda_tensorflow():
    gpu, cpu = Dockerfile("Dockerfile.gpu"), Dockerfile("Dockerfile")
    assert gpu.bases() == [b for b in cpu.bases() if b.startswith("apache/beam")]
    assert gpu.lines[-1] == cpu.lines[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    assert any('"tensorflow[and-cuda]==' in r for r in gpu.instructions("RUN"))


def test_dataflow_image_is_also_the_flex_template_launcher():
    cpu = Dockerfile("Dockerfile")
    assert any("template-launcher-base" in b for b in cpu.bases())
    copied = [ln.split() for ln in cpu.instructions("COPY") if ln.startswith("--from")]
    assert ["--from=launcher", "/opt/google/dataflow/python_template_launcher",
            "/opt/google/dataflow/python_template_launcher"] in copied
    env = " ".join(cpu.instructions("ENV"))
    assert re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\S+/infra/flex_main.py", env)
    assert ["infra/flex_main.py", "infra/flex_main.py"] in [
        ln.split() for ln in cpu.instructions("COPY")]


def test_cloud_build_builds_every_image_and_the_specs_use_them():
    build = yaml.safe_load((INFRA / "cloudbuild.yaml").read_text())
    steps = {s["args"][s["args"].index("-f") + 1]: s["args"][s["args"].index("-t") + 1]
             for s in build["steps"]}
    assert sorted(steps) == [f"infra/{d}" for d in DOCKERFILES]
    assert sorted(build["images"]) == sorted(steps.values())
    assert set(build["substitutions"]) == {t.strip("${}") for t in steps.values()}
    trainers = {"vertex-train.yaml": "infra/Dockerfile.train",
                "vertex-train-tpu.yaml": "infra/Dockerfile.train-tpu"}
    for spec, dockerfile in trainers.items():
        image = yaml.safe_load((INFRA / spec).read_text())["workerPoolSpecs"][0][
            "containerSpec"]["imageUri"]
        assert "${_" + image.strip("${}") + "}" == steps[dockerfile]  # same name, one _
    deploy = (INFRA / "deploy.sh").read_text()
    for sub in build["substitutions"]:
        assert f"{sub}=${{{sub[1:]}}}" in deploy  # deploy.sh images passes each one
