"""The README is a tested path: its bash blocks run as written, in order, on a fresh folder.

Every ```bash block of README.md is one step of the walkthrough unless the line before it
is an HTML comment ``<!-- not run: REASON -->`` (installation, Google Cloud). The fast
tests read the blocks and check every ``landslides COMMAND --flag`` they use against the
CLI's own usage, so a renamed or removed flag breaks them; the slow test runs the blocks in
a temporary folder with this interpreter's folder (``.venv/bin``) on ``PATH`` and checks
what each kind of step should leave behind.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
#: The stages a reader of the walkthrough runs; each must appear in a block that runs.
STAGES = {"synth", "terrain", "export", "train", "evaluate", "tune", "predict", "scan",
          "compare"}
#: Tokens that end a simple command in a bash line.
_OPERATOR = re.compile(r"[;&|<>()]+")


@dataclass(frozen=True)
class Block:
    """A fenced bash block of the README."""

    line: int  # 1-based line of the opening fence
    code: str
    skip_reason: str | None  # from <!-- not run: ... --> on the line before, else None

    @property
    def runs(self) -> bool:
        return self.skip_reason is None


def readme_blocks(text: str) -> list[Block]:
    """The ```bash blocks of ``text`` in order, each marked run or not run."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"README.md:{i + 1}: the bash block is never closed"
        before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = NOT_RUN.fullmatch(before)
        blocks.append(Block(i + 1, "\n".join(lines[i + 1:end]) + "\n",
                            marker.group(1) if marker else None))
        i = end + 1
    return blocks


def landslides_commands(code: str) -> list[list[str]]:
    """The arguments of every ``landslides ...`` command in a bash block.

    Continuation lines are joined, comments dropped, here-document bodies skipped; a
    command ends at a shell operator (``;``, ``&&``, ``|``, a redirection).
    """
    code = code.replace("\\\n", " ")
    out: list[list[str]] = []
    heredoc: str | None = None
    for line in code.splitlines():
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
        for k, tok in enumerate(tokens):
            if tok == "<<" and k + 1 < len(tokens):
                heredoc = tokens[k + 1]
            if tok == "landslides" or tok.endswith("/landslides"):
                args: list[str] = []
                for arg in tokens[k + 1:]:
                    if _OPERATOR.fullmatch(arg):
                        break
                    args.append(arg)
                out.append(args)
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # the checkout under test, also when .venv was installed from another checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MPLBACKEND", "Agg")
    return env


@cache
def _blocks() -> tuple[Block, ...]:
    return tuple(readme_blocks(README.read_text(encoding="utf-8")))


@cache
def _usage(command: str) -> tuple[frozenset[str], frozenset[str]]:
    """(all options, required options) of ``landslides COMMAND`` from its usage line."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", command, "--help"],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"`landslides {command} --help` failed:\n{proc.stderr}"
    usage = proc.stdout.split("\n\n", 1)[0]
    every = frozenset(re.findall(r"--[A-Za-z0-9][\w-]*", usage))
    bare = usage
    while True:  # drop optional [...] groups, innermost first
        stripped = re.sub(r"\[[^\[\]]*\]", "", bare)
        if stripped == bare:
            break
        bare = stripped
    return every, frozenset(re.findall(r"--[A-Za-z0-9][\w-]*", bare))


@cache
def _beam_options() -> frozenset[str]:
    """The Beam flags the CLI accepts (also those whose dest differs, --dask_client_address)."""
    from pipelines.beam_util import beam_option_strings

    return frozenset(beam_option_strings())


def _opt(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------- fast
def test_readme_blocks_are_found_and_marked() -> None:
    blocks = _blocks()
    run = [b for b in blocks if b.runs]
    skipped = [b for b in blocks if not b.runs]
    # the installation block and the Google Cloud ones are the only blocks not run
    assert skipped and all(b.skip_reason for b in skipped)
    assert any("Google Cloud" in (b.skip_reason or "") for b in skipped)
    commands = {args[0] for b in run for args in landslides_commands(b.code) if args}
    assert commands >= STAGES, f"stages missing from the runnable blocks: {STAGES - commands}"
    # shell blocks under another name would escape the test
    other = re.findall(r"^```(sh|shell|console|zsh)\s*$", README.read_text(encoding="utf-8"),
                       flags=re.M)
    assert not other, f"shell blocks must be ```bash to be run by this test: {other}"


def test_readme_says_how_to_put_landslides_on_path() -> None:
    text = README.read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in text and ".venv/bin/landslides" in text
    # the entry point `make venv` installs is where the README says it is
    assert (BIN / "landslides").exists(), (
        f"no `landslides` beside {sys.executable}: install the project (make venv)")


def test_every_readme_command_and_flag_exists() -> None:
    """Each ``landslides COMMAND --flag`` of every block (run or not) is in the CLI."""
    problems = []
    for block in _blocks():
        for args in landslides_commands(block.code):
            where = f"README.md:{block.line}: landslides {' '.join(args[:1])}"
            if not args or args[0].startswith("-"):
                problems.append(f"{where}: no command")
                continue
            every, required = _usage(args[0])
            given = {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}
            # Beam stages take Beam's pipeline options after their own
            unknown = sorted(f for f in given if f not in every and f not in _beam_options())
            missing = sorted(required - given)
            if unknown:
                problems.append(f"{where}: unknown options {unknown}")
            if missing:
                problems.append(f"{where}: required options missing {missing}")
    assert not problems, "\n".join(problems)


def test_command_parsing_sees_flags_loops_and_heredocs() -> None:
    code = ("for y in 2016 2017; do\n"
            "  landslides predict --out sweep_$y/ \\\n    --aoi a.geojson; done  # --nope\n"
            "cat > s.yaml <<'EOF'\nlandslides: not a command\nEOF\n"
            "landslides scan --config s.yaml && echo ok\n")
    assert landslides_commands(code) == [
        ["predict", "--out", "sweep_$y/", "--aoi", "a.geojson"],
        ["scan", "--config", "s.yaml"]]
    blocks = readme_blocks("x\n<!-- not run: cloud -->\n```bash\na\n```\n\n```bash\nb\n```\n")
    assert [(b.code, b.skip_reason) for b in blocks] == [("a\n", "cloud"), ("b\n", None)]


# ----------------------------------------------------------------------------- slow
def _check_outputs(folder: Path, commands: list[list[str]]) -> None:
    """What each kind of step of the walkthrough leaves behind, from its own arguments."""
    def path(value: str | None) -> Path:
        assert value, "an output option is missing"
        return folder / value

    def matches(value: str | None) -> list[Path]:  # sweep_$year/ -> every swept year
        pattern = re.sub(r"\$\{?\w+\}?", "*", value or "").rstrip("/")
        found = sorted(folder.glob(pattern))
        assert found, f"nothing at {pattern}"
        return found

    seen: set[str] = set()
    scans: dict[str, int] = {}
    for args in commands:
        cmd = args[0]
        seen.add(cmd)
        if cmd in ("train", "tune"):
            manifest = json.loads((path(_opt(args, "--data")) / "manifest.json").read_text())
            assert manifest["patches"]["train"] > 0 and manifest["patches"]["val"] > 0, \
                f"{_opt(args, '--data')}: {manifest['patches']}"
            artifact = path(_opt(args, "--out")) / ("best" if cmd == "tune" else "")
            assert (artifact / "model.keras").is_file()
            meta = json.loads((artifact / "artifact.json").read_text())
            assert meta["model_id"] and meta["bands"] == manifest["bands"]
        elif cmd == "evaluate":
            out = path(_opt(args, "--out") or _opt(args, "--model"))
            ev = json.loads((out / "evaluation.json" if out.is_dir() else out).read_text())
            assert ev["patches"] > 0 and 0.0 <= ev["f1"] <= 1.0
        elif cmd == "validate-precision":
            meta = json.loads((path(_opt(args, "--model")) / "artifact.json").read_text())
            assert set(meta["precisions"]["validated"]) == {"fp32", "bf16", "int8"}
            assert (path(_opt(args, "--model")) / "model.int8.tflite").is_file()
        elif cmd == "predict":
            for sweep in matches(_opt(args, "--out")):
                run = json.loads((sweep / "run.json").read_text())
                assert run["status"] == "ok", f"{sweep}: {run['status']}"
                assert run["counts"]["chunks_failed"] == 0
                assert run["counts"]["chunks_computed"] + run["counts"]["chunks_skipped"] > 0
                assert (sweep / "inventory.gpkg").is_file()
        elif cmd == "compare":
            metrics = json.loads((path(_opt(args, "--out")) / "metrics.json").read_text())
            assert metrics["status"] == "ok" and metrics["years"]
            if _opt(args, "--predicted"):
                assert metrics["mode"] == "comparison"
                assert all("pixel" in y for y in metrics["years"].values())
            if _opt(args, "--aoi"):
                assert metrics["aoi"] == _opt(args, "--aoi")
        elif cmd == "classify-train":
            out = path(_opt(args, "--out"))
            backbones = [b for a, v in itertools.pairwise(args) if a == "--backbone"
                         for b in v.split(",")]
            for name in backbones if len(backbones) > 1 else [""]:
                meta = json.loads((out / name / "artifact.json").read_text())
                assert meta["task"] == "classification" and meta["metrics"]["val"]["examples"]
        elif cmd == "classify-eval":
            model = path(_opt(args, "--model"))
            found = sorted(model.rglob("classification_eval.json"))
            assert found, f"no classification_eval.json under {model}"
            for f in found:
                ev = json.loads(f.read_text())
                assert ev["examples"] > 0 and 0.0 <= ev["f1"] <= 1.0
        elif cmd == "explain":
            index = json.loads((path(_opt(args, "--out")) / "explanations.json").read_text())
            assert index["items"] and all((folder / e["png"]).is_file() for e in index["items"])
        elif cmd == "scan":
            config = path(_opt(args, "--config"))
            scans[str(config)] = scans.get(str(config), 0) + 1
    assert seen >= STAGES
    for config, runs in scans.items():
        spec = yaml.safe_load(Path(config).read_text())
        record = json.loads((Path(config).parent / spec["out"] / "scan.json").read_text())
        assert not record["failed"] and record["done_periods"]
        if runs > 1:  # run again: every period was done, so every period is skipped
            assert {p["action"] for p in record["periods"]} == {"skipped"}, record["periods"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    assert (BIN / "landslides").exists(), f"no `landslides` beside {sys.executable}"
    env = _env()
    commands: list[list[str]] = []
    timings = []
    for block in _blocks():
        if not block.runs:
            continue
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=900)
        timings.append(f"README.md:{block.line}: {time.monotonic() - t0:.0f} s")
        assert proc.returncode == 0, (
            f"README.md:{block.line}: exit {proc.returncode}\n{block.code}\n"
            f"--- output (end) ---\n{(proc.stdout + proc.stderr)[-4000:]}")
        commands += landslides_commands(block.code)
    print("\n".join(timings))
    _check_outputs(tmp_path, commands)
