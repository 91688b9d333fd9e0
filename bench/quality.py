"""Model quality of the demo study, measured on held-out areas, for several world seeds.

For every seed it runs the demo study (``landslides demo``: world, held-out blocks,
export, train, fine-tune, sweeps, comparison) with the demo's temporal input stack, and
for the first seed (``--single-date-seeds``) again on the same world with a single-date
stack (the target image alone), and prints one table side by side:

* per year, on the held-out blocks only, over whole sweeps: pixel precision, recall and
  F1, and predicted vs reference landslide counts (observed pixels only);
* base vs fine-tuned model on patches of the held-out blocks (all years);
* the seconds each study took.

It writes every figure to ``--json`` (default ``bench-quality.json``). Run it with
``make bench-quality`` or ``.venv/bin/python bench/quality.py --seeds 42,7,123``. Each
study takes minutes (about as long as ``make demo``); ``--quick`` uses the quick demo;
``--stack NAME=REF;REF`` also runs the first seed with other reference images.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import fsio
from pipelines.demo import WORLD_FIELDS, DemoConfig, run_demo, share_world

VARIANTS = ("temporal", "single-date")


def _config(out: str, seed: int, variant: str, quick: bool,
            stacks: dict[str, tuple[str, ...]] | None = None) -> DemoConfig:
    if variant == "temporal":
        return DemoConfig(out=out, seed=seed, quick=quick)
    if stacks and variant in stacks:  # the demo with other reference images
        return DemoConfig(out=out, seed=seed, quick=quick, references=stacks[variant])
    return DemoConfig(out=out, seed=seed, quick=quick, references=(), change=())


def run_study(out: str, seed: int, variant: str, quick: bool,
              stacks: dict[str, tuple[str, ...]] | None = None) -> dict:
    cfg = _config(out, seed, variant, quick, stacks)
    t0 = time.monotonic()
    results = run_demo(cfg)
    seconds = time.monotonic() - t0
    held = results["compare"]["held_out"]
    return {"seed": seed, "variant": variant, "seconds": round(seconds, 1),
            "stack": cfg.stack.describe(), "train_years": list(cfg.train_years),
            "evaluate": results["evaluate"], "held_out": held}


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:5.2f}"


def print_table(rows: list[dict]) -> None:
    years = sorted({y for r in rows for y in r["held_out"]})
    print("\nHeld-out blocks, whole sweeps, per year: F1 (precision/recall), predicted/reference "
          "count")
    head = f"{'seed':>5} {'stack':12}" + "".join(f" {y:>22}" for y in years)
    print(head)
    for r in rows:
        cells = []
        for y in years:
            m = r["held_out"].get(y, {})
            cells.append(f" {_fmt(m.get('f1'))} ({_fmt(m.get('precision')).strip()}/"
                         f"{_fmt(m.get('recall')).strip()}) {m.get('predicted_count')}/"
                         f"{m.get('reference_count')}".rjust(23))
        print(f"{r['seed']:>5} {r['variant']:12}" + "".join(cells))
    print("\nPatches of the held-out blocks (all years): base vs fine-tuned F1, study time")
    for r in rows:
        ev = r["evaluate"]
        print(f"{r['seed']:>5} {r['variant']:12} base F1 {_fmt(ev['base'].get('f1'))}  "
              f"fine-tuned F1 {_fmt(ev['finetuned'].get('f1'))}  {r['seconds']:.0f} s")
    targets = []
    for r in rows:
        if r["variant"] != "temporal":
            continue
        f1s = {y: m.get("f1") or 0.0 for y, m in r["held_out"].items()}
        counts_ok = all(m.get("reference_count") and m.get("predicted_count") is not None
                        and abs(m["predicted_count"] - m["reference_count"])
                        <= 0.3 * m["reference_count"] for m in r["held_out"].values())
        ev = r["evaluate"]
        beats = ev["finetuned"]["f1"] > ev["base"]["f1"]
        targets.append(f"seed {r['seed']}: min F1 {min(f1s.values()):.2f} "
                       f"({min(f1s, key=lambda y: f1s[y])}), counts within 30% every year: "
                       f"{'yes' if counts_ok else 'no'}, fine-tuned beats base: "
                       f"{'yes' if beats else 'no'}")
    print("\n" + "\n".join(targets))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="42,7,123", help="World seeds (default 42,7,123).")
    p.add_argument("--out", default="bench-quality-out", help="Work folder.")
    p.add_argument("--json", default="bench-quality.json", help="Where to write the figures.")
    p.add_argument("--quick", action="store_true", help="The quick demo (smaller world).")
    p.add_argument("--single-date-seeds", default=None,
                   help="Seeds also run with a single-date stack (default: the first seed).")
    p.add_argument("--stack", action="append", default=[], metavar="NAME=REF;REF...",
                   help="Also run the first seed with other reference images, e.g. "
                        "'2refs=base=-4y..-1y:greenest;pre=2009-01-01/2012-12-31:greenest' "
                        "(NAME: up to 12 characters); repeatable.")
    args = p.parse_args(argv)
    stacks: dict[str, tuple[str, ...]] = {}
    for text in args.stack:
        name, _, refs = text.partition("=")
        if not refs or len(name) > 12 or name in VARIANTS:
            p.error(f"--stack {text!r}: give NAME=REF;REF... with a new name of up to 12 "
                    f"characters")
        stacks[name] = tuple(r.strip() for r in refs.split(";") if r.strip())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pipelines.demo").setLevel(logging.INFO)
    seeds = [int(s) for s in args.seeds.split(",")]
    single = ([int(s) for s in args.single_date_seeds.split(",") if s.strip()]
              if args.single_date_seeds is not None else seeds[:1])
    rows = []
    for seed in seeds:
        base = os.path.join(args.out, f"seed{seed}")
        first = None
        variants = [v for v in VARIANTS if v == "temporal" or seed in single]
        variants += list(stacks) if seed == seeds[0] else []
        for variant in variants:
            out = os.path.join(base, variant)
            if first is not None:
                share_world(first, out)
            rows.append(run_study(out, seed, variant, args.quick, stacks))
            first = first or out
            fsio.write_json(args.json, {"world_fields": list(WORLD_FIELDS), "rows": rows})
    print_table(rows)
    print(f"\nFigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
