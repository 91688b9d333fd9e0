"""The ``landslides`` console entry point: argument parsing only.

Every subcommand's flags are generated from its options dataclass (see
:mod:`pipelines.options`); the parsed flags become that options object, which is handed
to the command's function (:data:`pipelines.options.commands.COMMANDS`). Only the chosen
command's modules are imported, so ``landslides synth`` does not pay for TensorFlow or
Beam. Beam stages accept Beam pipeline options after their own (``--runner
DataflowRunner --project ...``); other commands reject unknown arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from model.errors import ModelError
from pipelines import __version__, termination
from pipelines.errors import LandslideError
from pipelines.options.commands import COMMANDS
from pipelines.options.fields import add_arguments, from_namespace

log = logging.getLogger(__name__)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``landslides`` parser; with ``only``, just that command's flags are added.

    Building a command's flags imports its options module, so :func:`main` builds only
    the chosen one's (``landslides --help`` imports none).
    """
    parser = argparse.ArgumentParser(
        prog="landslides",
        description="Map landslides from satellite imagery: export, train, predict, compare.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="More logging (-vv for debug).")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if only is None or name == only:
            add_arguments(p, command.options_class())
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a global option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if verbose < 1:  # Beam logs what unwinds through it with a traceback: -v shows it
        for handler in logging.getLogger().handlers:
            handler.addFilter(_no_beam_traceback)
    if verbose < 1:
        sys.unraisablehook = _unraisable_line
    if verbose < 2:
        for noisy in ("apache_beam", "absl", "tensorflow", "rasterio", "urllib3", "google",
                      "fiona", "pyogrio", "matplotlib", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _unraisable_line(unraisable: sys.UnraisableHookArgs) -> None:
    """One warning line, not a traceback, for an exception Python had to ignore.

    E.g. rasterio's GDAL error callback failing to decode a message with the raw bytes of a
    damaged file: the error that matters reaches :func:`main` on its own; ``-v`` keeps
    Python's traceback.
    """
    exc = unraisable.exc_value
    log.warning("ignored %s in %s: %s", type(exc).__name__ if exc else "exception",
                getattr(unraisable.object, "__qualname__", unraisable.object), exc)


def _no_beam_traceback(record: logging.LogRecord) -> bool:
    """Keep the line, drop the traceback, of errors Beam logs (or any after a SIGTERM).

    The error itself reaches :func:`main`, which says what it is and what to do.
    """
    if record.exc_info and (termination.stopping.is_set()
                            or record.name.startswith("apache_beam")):
        record.exc_info, record.exc_text = None, None
    return True


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> None:
    """Stop on a word that is neither the command's nor used by Beam's option parser.

    Refused: options neither the command nor Beam knows (with the closest known flag as
    a hint), single-dash words, and stray words that are no option's value, such as the
    other files of a shell-expanded glob (Beam would discard them all and run without
    them). The value of a Beam option given without ``=`` is used, so it passes.
    """
    import difflib

    from pipelines.beam_util import beam_option_strings, unknown_beam_args
    from pipelines.errors import InputError

    try:
        unknown = unknown_beam_args(extra)
    except InputError as exc:
        parser.error(f"{command}: {exc}")
    if not unknown:
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ours = [o for o in sub.choices[command]._option_string_actions if o.startswith("--")]
    beam = beam_option_strings()
    hints, stray, single = [], [], False
    for i, word in enumerate(unknown):
        if not word.startswith("-"):
            hints.append(word)
            before = unknown[i - 1] if i else ""
            if not (before.startswith("-") and "=" not in before):  # not an unknown's value
                stray.append(word)
            continue
        name = word.split("=", 1)[0]
        if name in parser._option_string_actions:  # -v after the command
            hints.append(f"{word} (an option of `landslides` itself: put it before "
                         f"{command})")
            continue
        single = single or not name.startswith("--")
        wanted = name if name.startswith("--") else f"-{name}"  # -periods: --periods?
        close = list(dict.fromkeys(  # the command's own options first, then Beam's
            difflib.get_close_matches(wanted, ours, n=1, cutoff=0.75)
            + difflib.get_close_matches(wanted, beam, n=1, cutoff=0.75)))
        hints.append(word + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    fixes = ""
    if single:
        fixes += "; options take two dashes"
    if stray:
        fixes += (f"; {' '.join(stray)} {'is' if len(stray) == 1 else 'are'} no option's "
                  f"value: give a repeatable option once "
                  f"per value (--images a.tif --images b.tif) and quote globs "
                  f"(--images '/data/s2_*.tif') so that the shell does not expand them")
    parser.error(f"{command}: unrecognized arguments: {' '.join(hints)}; they are neither "
                 f"options of `landslides {command}` nor Beam pipeline options or their "
                 f"values{fixes}.")


#: Exit code of an error that is none of ours (BSD's EX_SOFTWARE).
EXIT_UNEXPECTED = 70


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code.

    0 ok, 1 partial failure, 2 bad input, 70 an unexpected error (the traceback with
    ``-v``), 130 interrupted (Ctrl-C), 143 terminated by SIGTERM (see
    :mod:`pipelines.termination`).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_in(words) or "")
    except ModuleNotFoundError as exc:  # a command whose options need TensorFlow (train)
        if not _lacks_tensorflow(exc):
            raise
        print(_tensorflow_hint(_command_in(words) or "landslides"), file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(words)
    command = COMMANDS[args.command]
    if extra and not command.beam:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        _refuse_unknown(parser, args.command, extra)
    _setup_logging(args.verbose, args.quiet)
    try:
        with termination.handle_sigterm():
            options = from_namespace(command.options_class(), args)
            run = command.runner()
            code = run(options, extra) if command.beam else run(options)
    except BaseException as exc:
        if termination.stopping.is_set():  # whatever the SIGTERM unwound into (Beam wraps)
            return _terminated(args.command)
        if isinstance(exc, LandslideError | ModelError):
            print(f"landslides {args.command}: error: {exc}", file=sys.stderr)
            return 2
        if _lacks_tensorflow(exc):
            print(_tensorflow_hint(args.command), file=sys.stderr)
            return 2
        if isinstance(exc, KeyboardInterrupt):
            print(f"landslides {args.command}: interrupted", file=sys.stderr)
            return 130
        if args.verbose or not isinstance(exc, Exception):
            raise
        # not one of our errors: a bug or an environment problem nobody foresaw
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"landslides {args.command}: unexpected error: {type(exc).__name__}: {first}. "
              f"Outputs already written are kept; run again with -v for the traceback and "
              f"report it.", file=sys.stderr)
        return EXIT_UNEXPECTED
    return int(code or 0)


def _lacks_tensorflow(exc: BaseException) -> bool:
    """True for the import error of an environment without TensorFlow."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in (
        "tensorflow", "tf_keras")


def _tensorflow_hint(command: str) -> str:
    return (f"landslides {command}: error: this command trains or runs the model, which "
            f"needs TensorFlow, and it is not installed here (export does not need it). "
            f"Install the tf extra: pip install 'landslide-mapper[tf]'.")


def _terminated(command: str, grace_s: float = 60.0) -> int:
    """After a SIGTERM: let the work in flight end, say what became of it, exit 143."""
    left = termination.wait_idle(grace_s)
    ended = termination.ended()
    finished = [w for w, ok in ended if ok]
    abandoned = [w for w, ok in ended if not ok] + left
    print(f"landslides {command}: terminated by SIGTERM; finished: "
          f"{', '.join(finished) or 'nothing in flight'}; abandoned: "
          f"{', '.join(abandoned) or 'nothing'}. Nothing half-written was published: "
          f"run the same command again to resume.", file=sys.stderr)
    return termination.EXIT_SIGTERM


if __name__ == "__main__":
    sys.exit(main())
