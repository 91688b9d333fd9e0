"""The Flex Template's parameters, generated from the options of scan, predict and export.

Every option of those commands that is marked ``template`` (the default) is one template
parameter, named after its flag (``--min-area`` -> ``min_area``); ``infra/flex_main.py``
turns a launch's parameters back into a ``landslides`` command line with :data:`PARAMS`,
and ``infra/scan-template-metadata.json`` is this module's output::

    python -m pipelines.options.template > infra/scan-template-metadata.json

(``tests/test_options.py`` checks that the file is up to date).
"""

from __future__ import annotations

import argparse
import json
import re
import typing
from dataclasses import dataclass
from typing import Any

from pipelines.options.commands import COMMANDS
from pipelines.options.fields import GCS, base_type, cli_fields, default_of, flag_of, help_of

#: The commands a launch can run, in the order of the ``command`` parameter.
TEMPLATE_COMMANDS = ("scan", "predict", "export")
_INT = r"^-?[0-9]+$"
_FLOAT = r"^-?[0-9]+(\.[0-9]*)?([eE]-?[0-9]+)?$"
_BOOL = r"^(true|false)$"
DESCRIPTION = ("landslide-mapper on Dataflow: one step of a scheduled regional scan "
               "(command=scan), one sweep (predict) or a training-patch export (export). "
               "Pipeline options (machine type, workers, sdk_container_image...) are given "
               "as additional parameters of the launch.")
COMMAND_PARAM = {
    "name": "command",
    "label": "Command",
    "helpText": "What this launch runs: scan (one step of a scheduled scan: compares the "
                "periods whose sweeps finished, refreshes the summary and STAC catalog, "
                "submits the next pending period), predict (one sweep) or export (training "
                "shards).",
    "isOptional": False,
    "regexes": [f"^({'|'.join(TEMPLATE_COMMANDS)})$"],
}


@dataclass(frozen=True)
class Param:
    """How one template parameter becomes ``landslides`` arguments.

    Attributes:
        flag: The ``landslides`` option it fills.
        commands: The commands it applies to.
        kind: ``value`` (``--flag VALUE``), ``switch`` (``true`` adds ``--flag``),
            ``toggle`` (``--flag`` / ``--no-flag``) or ``list`` (comma-separated values,
            one ``--flag VALUE`` each).
        label: Its label in the template metadata.
        help: Its help text there (prefixed with the commands).
        regex: The pattern its value must match, if any.
    """

    flag: str
    commands: tuple[str, ...]
    kind: str = "value"
    label: str = ""
    help: str = ""
    regex: str | None = None


def _kind(f: Any, tp: Any) -> str:
    action = f.metadata.get("action")
    if action == "append":
        return "list"
    if action in ("store_true", "store_false") or (tp is bool and default_of(f) is False):
        return "switch"
    if tp is bool:
        return "toggle"
    return "value"


def _regex(f: Any, tp: Any, kind: str) -> str | None:
    m = f.metadata
    if "regex" in m:
        return str(m["regex"])
    if kind in ("switch", "toggle"):
        return _BOOL
    if "choices" in m:
        return "^(" + "|".join(re.escape(str(c)) for c in m["choices"]) + ")$"
    if m.get("path"):
        return GCS
    if tp is int:
        return _INT
    if tp is float:
        return _FLOAT
    return None


def _label(f: Any, name: str) -> str:
    m = f.metadata
    if "label" in m:
        return str(m["label"])
    words = name.split("_")
    units = m.get("units")
    if units and words[-1] == units:
        words = words[:-1]
    if words[0] == "ee":
        words = ["Earth", "Engine", *words[1:]]
    text = " ".join(words)
    text = text[:1].upper() + text[1:]
    return f"{text} ({units})" if units else text


def _params() -> dict[str, list[tuple[str, Param]]]:
    """Every template option of every template command: name -> [(command, param)]."""
    found: dict[str, list[tuple[str, Param]]] = {}
    for command in TEMPLATE_COMMANDS:
        cls = COMMANDS[command].options_class()
        hints: dict[type, dict[str, Any]] = {}
        for owner, f, _ in cli_fields(cls):
            if not f.metadata.get("template", True) or f.metadata.get("positional"):
                continue
            tp = base_type(hints.setdefault(owner, typing.get_type_hints(owner))[f.name])
            flag = flag_of(f)
            name = flag[2:].replace("-", "_")
            kind = _kind(f, tp)
            found.setdefault(name, []).append((command, Param(
                flag, (command,), kind, _label(f, name), help_of(f), _regex(f, tp, kind))))
    return found


def template_params() -> dict[str, Param]:
    """Template parameter name -> how it maps to the commands' flags.

    Raises:
        ValueError: one name means different things in two commands (flag, kind or
            pattern), which one parameter cannot carry.
    """
    out: dict[str, Param] = {}
    for name, uses in _params().items():
        first = uses[0][1]
        for command, p in uses[1:]:
            if (p.flag, p.kind, p.regex) != (first.flag, first.kind, first.regex):
                raise ValueError(f"Template parameter {name!r} differs between "
                                 f"{uses[0][0]} and {command}: {first} vs {p}.")
        helps = list(dict.fromkeys(p.help for _, p in uses))
        commands = tuple(c for c, _ in uses)
        text = (f"{'/'.join(commands)}: {helps[0]}" if len(helps) == 1 else
                " ".join(f"{c}: {p.help}" for c, p in uses))
        out[name] = Param(first.flag, commands, first.kind, first.label, text, first.regex)
    return out


def template_metadata() -> dict[str, Any]:
    """The Flex Template metadata (``infra/scan-template-metadata.json``)."""
    params: list[dict[str, Any]] = [COMMAND_PARAM]
    for name, p in template_params().items():
        entry: dict[str, Any] = {"name": name, "label": p.label, "helpText": p.help,
                                 "isOptional": True}
        if p.regex:
            entry["regexes"] = [p.regex]
        params.append(entry)
    return {"name": "landslides", "description": DESCRIPTION, "streaming": False,
            "parameters": params}


def render() -> str:
    """The metadata file's text."""
    return json.dumps(template_metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.options.template",
                                     description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(render(), end="")
    return 0


#: The parameters, computed once (what infra/flex_main.py reads).
PARAMS = template_params()

__all__ = ["COMMAND_PARAM", "PARAMS", "TEMPLATE_COMMANDS", "Param", "render",
           "template_metadata", "template_params"]

if __name__ == "__main__":
    raise SystemExit(main())
