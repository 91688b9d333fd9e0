"""Image classifiers on patches of the demo world, scored on its held-out blocks.

The image-level study of issue 19 on the demo's data: the world, the held-out blocks and
the exports of ``landslides demo`` (seed 42, its temporal input stack in 64-px
patches), reused from ``--out`` when already there. Every backbone of ``--backbones`` is
trained by one ``classify-train`` run (weights ``none``: the internet is not reachable
here, and ImageNet weights have no filters for all but 3 of the stack's channels anyway) on
the patches the demo fine-tunes on (the training area and the investigation area's other
blocks, in the demo's training years; validation: the export's own spatially blocked
split), then ``classify-eval`` scores all of them on the patches of the held-out blocks
(every year 2013-2019, never trained on). A patch is ``landslide`` when at least
``--min-landslide-share`` of its labelled pixels are.

It prints the validation and held-out tables and the best backbone's held-out F1, and
writes them to ``--json``. The default backbones are those that train in a few minutes on
2 CPU cores; the study's others are listed as skipped, with why (``--backbones`` takes
any keras.applications names).

    .venv/bin/python bench/classify.py [--backbones baseline,MobileNetV2,...]
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
from pipelines.demo import DemoConfig, StageRunner, stages

#: Trained by default: each takes a few CPU minutes on these patches here.
DEFAULT = ("baseline", "MobileNetV2", "EfficientNetB0")
#: Seconds per training epoch over the 871 training patches (64 x 64 x 30), measured on
#: the 2-core development machine in one run (32 random patches per step, 3 steps timed
#: after one to trace): the default three, and the study's others, which the default run
#: leaves out.
EPOCH_S = {"baseline": 7, "MobileNetV2": 6, "EfficientNetB0": 11, "EfficientNetB3": 51,
           "ResNet50": 40, "DenseNet121": 39}
SKIPPED = {
    "EfficientNetB3": "10.8M parameters",
    "ResNet50": "23.6M parameters",
    "DenseNet121": "7.0M parameters, 121 layers",
    "NASNetLarge": "84.9M parameters; not timed (several minutes per epoch expected)",
}
#: The demo stages that make the data (no model is trained).
DATA_STAGES = ("world", "terrain", "areas", "export_finetune")


def prepare(out: str, seed: int) -> tuple[str, str, float]:
    """The demo's world, held-out blocks and exports in ``out``; returns their paths."""
    cfg = DemoConfig(out=out, seed=seed)
    t0 = time.monotonic()
    StageRunner(cfg, [s for s in stages(cfg) if s.name in DATA_STAGES]).run()
    return cfg.path("shards", "finetune"), cfg.path("shards", "eval"), time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    from model.classify.config import MIN_SHARE, ClassifyConfig
    from model.classify.evaluation import evaluate_classifiers, table_text
    from model.classify.fit import train_classifiers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=",".join(DEFAULT),
                   help=f"Backbones trained (default {','.join(DEFAULT)}).")
    p.add_argument("--out", default="bench-classify-out", help="Work folder (reused).")
    p.add_argument("--json", default="bench-classify.json", help="Where to write the figures.")
    p.add_argument("--seed", type=int, default=42, help="World and training seed (42).")
    p.add_argument("--epochs", type=int, default=15, help="Maximum epochs (15).")
    p.add_argument("--patience", type=int, default=5, help="Early-stopping patience (5).")
    p.add_argument("--min-landslide-share", type=float, default=MIN_SHARE,
                   help=f"Positive patch: landslide share at least this ({MIN_SHARE}).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("pipelines.demo", "model.classify.fit"):
        logging.getLogger(name).setLevel(logging.INFO)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    train, held_out, data_s = prepare(args.out, args.seed)
    config = ClassifyConfig(weights="none", epochs=args.epochs, patience=args.patience,
                            min_landslide_share=args.min_landslide_share,
                            baseline_filters=16, seed=args.seed, saved_model=False)
    models = os.path.join(args.out, "classifiers")
    t0 = time.monotonic()
    rows = train_classifiers(train, models, backbones, config)
    train_s = time.monotonic() - t0
    results = evaluate_classifiers(models, held_out, split="test")
    print(f"\nData: {train} (training and validation), {held_out} (held-out blocks, all "
          f"years); prepared in {data_s:.0f} s")
    print(table_text(rows, "\nValidation split (calibrated threshold), best F1 first:"))
    first = results[0]
    print(table_text(results, f"\nHeld-out blocks: {first['examples']} patches, "
                              f"{first['landslides']} landslide (share >= "
                              f"{args.min_landslide_share:g}), best F1 first:"))
    skipped = {b: why for b, why in SKIPPED.items() if b not in backbones}
    if skipped:
        print("\nSkipped (pass --backbones to train them):")
        for name, why in skipped.items():
            if name in EPOCH_S:
                why = (f"{why}, {EPOCH_S[name]} s per epoch measured here vs "
                       f"{EPOCH_S['EfficientNetB0']} for EfficientNetB0: ~"
                       f"{EPOCH_S[name] * args.epochs / 60:.0f} min for {args.epochs} epochs")
            skipped[name] = why
            print(f"  {name}: {why}")
    print(f"\nBest backbone on the held-out blocks: {first['backbone']}, F1 "
          f"{first['f1']:.3f} (ROC-AUC {first['roc_auc']:.3f}); target F1 >= 0.9: "
          f"{'met' if first['f1'] >= 0.9 else 'not met'}. Training took {train_s:.0f} s.")
    fsio.write_json(args.json, {"validation": rows, "held_out": results,
                                "skipped": skipped, "seconds": {"data": round(data_s, 1),
                                                                "training": round(train_s, 1)},
                                "settings": config.to_dict()})
    print(f"Figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
