"""Dataflow Flex Template entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

The template launcher runs this file with the template's parameters as ``--name=value``
flags followed by Dataflow's own pipeline options (``--project``, ``--region``,
``--temp_location``, ``--template_location``...). It turns the parameters into a
``landslides scan|predict|export`` command line, keeps every other flag as a Beam option,
and runs :func:`pipelines.cli.main`.

A launch produces exactly one Dataflow job and cannot wait for it: the launcher runs the
pipeline with ``--template_location``, which makes the Dataflow runner write a job file
that Dataflow then starts. ``landslides scan`` detects this and submits one period's sweep
per launch, comparing and summarising the periods whose sweeps have finished since the
previous launch (see ``pipelines/scan/`` and ``infra/README.md``).

Keep this file a thin shim: Beam pickles functions by module, and nothing defined in a
``__main__`` module can be unpickled on a worker.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence

# Template parameter name -> the flag it fills (a Param), generated from the commands'
# options by pipelines/options/template.py, which also writes
# infra/scan-template-metadata.json.
from pipelines.options.template import PARAMS
from pipelines.options.template import TEMPLATE_COMMANDS as COMMANDS

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _truthy(name: str, value: str) -> bool:
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"Template parameter {name}={value!r}: use true or false.")


def parse_launch_args(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split the launcher's arguments into template parameters and Beam options."""
    parser = argparse.ArgumentParser(prog="flex_main", add_help=False, allow_abbrev=False)
    parser.add_argument("--command")
    for name in PARAMS:
        parser.add_argument(f"--{name}", dest=name)
    ns, beam_args = parser.parse_known_args(list(argv))
    return {k: v for k, v in vars(ns).items() if v is not None}, beam_args


def build_argv(params: Mapping[str, str], beam_args: Sequence[str] = ()) -> list[str]:
    """The ``landslides`` command line for a launch.

    Args:
        params: Template parameters (strings, as Dataflow passes them), with ``command``.
        beam_args: Pipeline options, appended unchanged.

    Raises:
        ValueError: a missing or unknown command, an unknown parameter, a parameter that
            does not apply to the command, or a bad true/false value.
    """
    command = params.get("command")
    if command not in COMMANDS:
        raise ValueError(f"Template parameter command={command!r}: use one of "
                         f"{', '.join(COMMANDS)}.")
    argv = [command]
    for name, value in params.items():
        if name == "command":
            continue
        p = PARAMS.get(name)
        if p is None:
            raise ValueError(f"Unknown template parameter {name!r}.")
        if command not in p.commands:
            raise ValueError(f"Template parameter {name!r} does not apply to {command} "
                             f"(it is for {', '.join(p.commands)}).")
        if p.kind == "switch":
            if _truthy(name, value):
                argv.append(p.flag)
        elif p.kind == "toggle":
            argv.append(p.flag if _truthy(name, value) else "--no-" + p.flag[2:])
        elif p.kind == "list":
            for v in str(value).split(","):
                if v.strip():
                    argv += [p.flag, v.strip()]
        else:
            argv += [p.flag, str(value)]
    return argv + list(beam_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the launch; returns the process exit code."""
    params, beam_args = parse_launch_args(sys.argv[1:] if argv is None else argv)
    try:
        landslides_argv = build_argv(params, beam_args)
    except ValueError as exc:
        print(f"flex_main: error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("landslides %s", " ".join(landslides_argv))
    from pipelines.cli import main as cli_main

    return cli_main(landslides_argv)


if __name__ == "__main__":
    sys.exit(main())
