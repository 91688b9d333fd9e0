"""Which input stack finds landslides: one study per stack on the demo world, side by side.

For each ``--stack`` (a ``;``-separated list of references, ``-`` for the target image
alone) it trains one model on the training area and the investigation area's fine-tuning
blocks together (the training years of the demo), sweeps the investigation area every
year and prints the held-out pixel F1 per year, like ``bench/quality.py`` but without the
base/fine-tune split, so stacks are compared on equal training. Each study takes
~6-9 minutes here::

    .venv/bin/python bench/stack_choice.py --seed 42 \\
        --stack 'prev=-1y' --stack 'base=-4y..-1y:greenest'

All studies of one run share one world (``--history`` years before 2013, enough for the
longest reference).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import demo


def study(root: str, seed: int, history: int, references: tuple[str, ...], epochs: int
          ) -> dict[str, dict]:
    """One stack's study in ``root``; returns the held-out summary per year."""
    import geopandas as gpd
    import pandas as pd

    from model.train import TrainConfig, train

    change = ("NDVI", "B4", "B8", "B11", "B12") if references else ()
    cfg = demo.DemoConfig(out=root, seed=seed, history_years=history, references=references,
                          change=change)
    world_stages = [s for s in demo.stages(cfg) if s.name in ("world", "terrain", "areas")]
    demo.StageRunner(cfg, world_stages).run()
    areas = demo._areas(cfg)
    a = gpd.read_file(cfg.path("world", "train_area.geojson"))
    b = gpd.read_file(areas["finetune_area"])
    region = gpd.GeoDataFrame(geometry=[pd.concat([a.geometry, b.geometry]).union_all()],
                              crs=a.crs)
    path = cfg.path("areas", "joint.geojson")
    region.to_file(path, driver="GeoJSON")
    demo._export(cfg, path, cfg.path("shards", "finetune"), cfg.train_years, (0.8, 0.2, 0.0),
                 1.0, 32)
    settings = {**demo._train_settings(cfg), "epochs": epochs, "patience": 10}
    train(cfg.path("shards", "finetune"), cfg.path("models", "finetuned"),
          TrainConfig(seed=seed, **settings))
    demo.stage_sweep(cfg)
    return demo.stage_compare(cfg)["held_out"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--stack", action="append",
                   help="References separated by ';' (e.g. 'prev=-1y;base=-4y..-2y:greenest'),"
                        " or '-' for the target image alone; repeatable (default: prev=-1y "
                        "and base=-4y..-1y:greenest).")
    p.add_argument("--history", type=int, default=4, help="World years before 2013 (4).")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--out", default="bench-stack-out")
    args = p.parse_args(argv)
    args.stack = args.stack or ["prev=-1y", "base=-4y..-1y:greenest"]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    rows = []
    world = None
    for i, text in enumerate(args.stack):
        refs = tuple(r.strip() for r in text.split(";") if r.strip() and r.strip() != "-")
        root = os.path.join(args.out, f"stack{i}")
        if world is not None:  # the same world, terrain and areas for every stack
            demo.share_world(world, root)
        rows.append((text, study(root, args.seed, args.history, refs, args.epochs)))
        world = world or root
    years = sorted({y for _, r in rows for y in r})
    print(f"\nHeld-out pixel F1 per year, seed {args.seed}")
    print(f"{'stack':40}" + "".join(f" {y:>5}" for y in years))
    for text, r in rows:
        print(f"{text:40}" + "".join(f" {(r[y].get('f1') or 0):5.2f}" for y in years))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
