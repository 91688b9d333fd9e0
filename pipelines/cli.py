"""The ``landslides`` console entry point: argument parsing only.

Each subcommand parses its arguments here and calls one importable function with the
same parameters. Only the chosen command's module is imported, so ``landslides synth``
does not pay for TensorFlow. Beam stages accept Beam pipeline options after their own
(``--runner DataflowRunner --project ...``); other commands reject unknown arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from pipelines import __version__
from pipelines.errors import LandslideError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, list[str]], int | None]


def _call(target: str, **fixed: object) -> Handler:
    """A handler that imports ``module:function`` late and calls it with parsed args."""

    def handler(args: argparse.Namespace, extra: list[str]) -> int | None:
        modname, fname = target.split(":")
        fn = getattr(importlib.import_module(modname), fname)
        kwargs = {k: v for k, v in vars(args).items()
                  if k not in {"command", "handler", "verbose", "quiet", "accepts_extra"}}
        kwargs.update(fixed)
        if getattr(args, "accepts_extra", False):
            kwargs["beam_args"] = extra
        result = fn(**kwargs)
        return result if isinstance(result, int) else 0

    return handler


# ----------------------------------------------------------------------------- commands
def _synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="Output folder (local or gs://).")
    p.add_argument("--seed", type=int, default=42, help="Random seed (default 42).")
    p.add_argument("--size-km", type=float, default=12.0,
                   help="Side of the square world in km (default 12).")
    p.add_argument("--pixel-size", type=float, default=10.0, help="Metres (default 10).")
    p.add_argument("--years", default="2013-2019", help="Year range, e.g. 2013-2019.")
    p.add_argument("--event-year", type=int, default=2015,
                   help="Year of the earthquake that triggers many landslides (default 2015).")
    p.add_argument("--clouds", action=argparse.BooleanOptionalAction, default=True,
                   help="Add clouds and cloud shadows (default on).")
    p.set_defaults(handler=_call("pipelines.sources.synthetic:generate_world_cli"))


def _terrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("dem", help="DEM raster (GeoTIFF/COG, local or gs://).")
    p.add_argument("--out", required=True, help="Output folder for the terrain COGs.")
    p.add_argument("--products", default="slope,aspect,curvature,hillshade",
                   help="Comma-separated products (default: all four).")
    p.add_argument("--z-factor", type=float, default=1.0,
                   help="Vertical exaggeration / unit conversion of elevations (default 1).")
    p.add_argument("--nodata", type=float, default=None,
                   help="Treat this DEM value as nodata (overrides the file's nodata).")
    p.set_defaults(handler=_call("pipelines.geo.terrain:write_terrain_cli"))


#: name -> (help, parser builder). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "synth": ("Generate the synthetic mountain-valley world (imagery, DEM, inventories).",
              _synth),
    "terrain": ("Compute slope, aspect, curvature and hillshade COGs from a DEM.", _terrain),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landslides",
        description="Map landslides from satellite imagery: export, train, predict, compare.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="More logging (-vv for debug).")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, build) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        build(p)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if verbose < 2:
        for noisy in ("apache_beam", "absl", "tensorflow", "rasterio", "urllib3", "google",
                      "fiona", "pyogrio", "matplotlib", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 partial failure, 2 bad input)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose, args.quiet)
    try:
        code = args.handler(args, extra)
    except LandslideError as exc:
        print(f"landslides {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"landslides {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
