"""Options as dataclass fields: one definition that argparse, the YAML checks and the template read.

An option is a dataclass field whose ``metadata`` holds at least ``help``. The metadata is
a plain dict (``model/`` writes it by hand without importing this module); :func:`option`
builds it for ``pipelines/``. Keys:

``help``
    What the option does; ``%(default)s`` is replaced by the field's default.
``flag``
    The command-line flag (default ``--`` + the field name with ``-`` for ``_``).
``positional``
    A positional argument instead of a flag.
``parse``
    Turns the command-line text (or the list of texts of an ``append`` flag) into the
    field's value; the field's default is used when the flag is not given.
``action``, ``choices``, ``metavar``
    As in :meth:`argparse.ArgumentParser.add_argument`. Booleans default to
    ``store_true`` (default ``False``) or ``--flag/--no-flag`` (default ``True``).
``group``
    Title of the argument group the flag is listed under in ``--help``.
``units``
    Units of the value (shown in template labels), e.g. ``"m"``.
``cli``, ``yaml``, ``template``
    Whether the option is a command-line flag, a key of its scan YAML block, and a Flex
    Template parameter (all ``True`` by default; only the options of the commands the
    template runs become parameters).
``path``
    The value is a path (resolved against the YAML file's folder; a template parameter
    must then be a Cloud Storage path).
``label``, ``regex``
    The template parameter's label and value pattern (default: derived from the name,
    the units, the type and the choices).
``nested``
    The field holds a value built from the options of another dataclass, whose flags are
    added in its place; ``convert`` turns that object into the field's value; with
    ``overrides`` the value is instead the dict of the flags given (every flag defaults to
    "unset"), ``exclude`` leaving some out.

Generators: :func:`add_arguments` (argparse), :func:`from_namespace` (parsed arguments ->
options object), :func:`yaml_keys` and :func:`value_fits` (YAML blocks), and
:mod:`pipelines.options.template` (Flex Template parameters).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

MISSING: Any = dataclasses.MISSING
#: Template value patterns: a Cloud Storage path, a vector file there or a bbox, a date.
GCS = r"^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/.*)?$"
BBOX_OR_GCS = r"^(gs://.+|-?[0-9.]+,-?[0-9.]+,-?[0-9.]+,-?[0-9.]+)$"
DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
           flag: str | None = None, positional: bool = False,
           parse: Callable[[Any], Any] | None = None, action: str | None = None,
           choices: tuple | None = None, metavar: str | None = None,
           group: str | None = None, units: str | None = None, cli: bool = True,
           yaml: bool = True, template: bool = True, path: bool = False,
           label: str | None = None, regex: str | None = None,
           **extra: Any) -> Any:
    """A dataclass field that is an option (see the module docstring for the keys).

    ``extra`` holds keys of a particular options class (e.g. the source kinds an imagery
    source option applies to).
    """
    meta: dict[str, Any] = {"help": help, "cli": cli, "yaml": yaml, "template": template,
                            "positional": positional, "path": path, **extra}
    for key, value in (("flag", flag), ("parse", parse), ("action", action),
                       ("choices", choices), ("metavar", metavar), ("group", group),
                       ("units", units), ("label", label), ("regex", regex)):
        if value is not None:
            meta[key] = value
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def nested(cls: type, *, default_factory: Any = MISSING,
           convert: Callable[[Any], Any] | None = None, overrides: bool = False,
           exclude: tuple[str, ...] = (), group: str | None = None) -> Any:
    """A field built from the options of dataclass ``cls`` (see the module docstring).

    Its flags, YAML and template settings are those of ``cls``'s fields; the field itself
    is never a key of a YAML block (the scan sets a sweep's source itself).
    """
    meta: dict[str, Any] = {"nested": cls, "convert": convert, "overrides": overrides,
                            "exclude": exclude, "group": group}
    if overrides and default_factory is MISSING:
        default_factory = dict
    return dataclasses.field(default_factory=default_factory, metadata=meta)


# ----------------------------------------------------------------------------- fields
def is_option(f: dataclasses.Field) -> bool:
    return "help" in f.metadata or "nested" in f.metadata


def flag_of(f: dataclasses.Field) -> str:
    """The command-line name of a field: its flag, or its name when positional."""
    if f.metadata.get("positional"):
        return f.name
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    """The field's default value (``MISSING`` for a required field)."""
    if f.default is not MISSING:
        return f.default
    factory: Any = f.default_factory
    return MISSING if factory is MISSING else factory()


def show(value: Any) -> str:
    """A default as a person writes it on the command line."""
    if isinstance(value, tuple | list):
        return ",".join(show(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def help_of(f: dataclasses.Field, default: Any = MISSING) -> str:
    """The field's help with ``%(default)s`` filled in (from ``default`` if given)."""
    text = str(f.metadata.get("help", ""))
    value = default_of(f) if default is MISSING else default
    return text.replace("%(default)s", show(value)) if "%(default)s" in text else text


def base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; other unions and generics are returned unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def cli_fields(cls: type, exclude: tuple[str, ...] = ()
               ) -> Iterator[tuple[type, dataclasses.Field, dict[str, Any]]]:
    """Every command-line option of ``cls``, in order, as ``(owner, field, outer)``.

    Nested options are flattened in place: ``owner`` is the dataclass declaring the
    field, ``outer`` the metadata of the ``nested`` field it comes through (empty for
    ``cls``'s own fields).
    """
    for f in dataclasses.fields(cls):
        if not is_option(f) or not f.metadata.get("cli", True) or f.name in exclude:
            continue
        if "nested" in f.metadata:
            for owner, inner, _ in cli_fields(f.metadata["nested"],
                                              f.metadata.get("exclude", ())):
                yield owner, inner, dict(f.metadata)
        else:
            yield cls, f, {}


# ----------------------------------------------------------------------------- argparse
def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add the command-line options of ``cls`` (and of its nested fields) to ``parser``.

    Raises:
        ValueError: two options would fill the same argument (a programming error).
    """
    groups: dict[str, Any] = {}
    hints: dict[type, dict[str, Any]] = {}
    seen: set[str] = set()
    for owner, f, outer in cli_fields(cls):
        hint = hints.setdefault(owner, typing.get_type_hints(owner))[f.name]
        if f.name in seen:
            raise ValueError(f"{cls.__name__}: two options are named {f.name!r}.")
        seen.add(f.name)
        title = f.metadata.get("group") or outer.get("group")
        target: Any = parser
        if title:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        _add_one(target, f, hint, overrides=bool(outer.get("overrides")))


def _add_one(target: Any, f: dataclasses.Field, hint: Any, overrides: bool) -> None:
    m = f.metadata
    tp = base_type(hint)
    default = default_of(f)
    kwargs: dict[str, Any] = {"help": help_of(f).replace("%", "%%")}
    for key in ("choices", "metavar"):
        if key in m:
            kwargs[key] = m[key]
    action = m.get("action")
    if tp is bool and action is None:
        action = "store_true" if default is False and not overrides else \
            argparse.BooleanOptionalAction
    if action is not None:
        kwargs["action"] = action
    if action not in ("store_true", "store_false", argparse.BooleanOptionalAction):
        kwargs["type"] = tp if tp in (int, float) and "parse" not in m else str
    if m.get("positional"):
        target.add_argument(f.name, **kwargs)
        return
    if "type" in kwargs and "choices" not in kwargs and "metavar" not in kwargs:
        kwargs["metavar"] = flag_of(f).lstrip("-").replace("-", "_").upper()
    if overrides or "parse" in m:
        kwargs["default"] = None
        if default is MISSING and not overrides:  # a required option with its own parser
            kwargs["required"] = True
    elif default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    target.add_argument(flag_of(f), dest=f.name, **kwargs)


def from_namespace(cls: type, ns: argparse.Namespace | Mapping[str, Any]) -> Any:
    """The options object of ``cls`` from parsed arguments (what :func:`add_arguments` adds).

    Options missing from ``ns`` (or ``None`` for a flag with a ``parse`` function) keep
    the field's default.
    """
    values = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not is_option(f) or not f.metadata.get("cli", True):
            continue
        m = f.metadata
        if "nested" in m:
            inner = m["nested"]
            if m.get("overrides"):
                kwargs[f.name] = {g.name: values[g.name]
                                  for _, g, _ in cli_fields(inner, m.get("exclude", ()))
                                  if values.get(g.name) is not None}
                continue
            obj = from_namespace(inner, values)
            kwargs[f.name] = m["convert"](obj) if m.get("convert") else obj
            continue
        if f.name not in values:
            continue
        value = values[f.name]
        if "parse" in m:
            if value is None:
                continue
            value = m["parse"](value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- YAML
def yaml_keys(cls: type) -> tuple[str, ...]:
    """The keys a YAML block of ``cls``'s options may hold, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls)
                 if is_option(f) and f.metadata.get("yaml", True) and "nested" not in f.metadata)


def value_fits(value: Any, tp: Any) -> bool:
    """Whether a YAML value has type ``tp`` (ints are floats; bools are not numbers)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(
            value_fits(v, args[0]) for v in value) if args else isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    return True


def type_name(tp: Any) -> str:
    """How a type is named in messages: ``int or null``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        return "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


__all__ = [
    "BBOX_OR_GCS",
    "DATE",
    "GCS",
    "add_arguments",
    "base_type",
    "cli_fields",
    "default_of",
    "flag_of",
    "from_namespace",
    "help_of",
    "is_option",
    "nested",
    "option",
    "show",
    "type_name",
    "value_fits",
    "yaml_keys",
]
