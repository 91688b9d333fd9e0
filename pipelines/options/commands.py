"""The ``landslides`` commands: each one's options dataclass and the function that runs it.

Names are ``module:attribute`` strings, imported only when that command runs (or its
parser is built), so ``landslides synth`` loads neither Beam nor TensorFlow. A command's
function takes the options object (and, for Beam stages, the Beam pipeline options left
on the command line) and returns the exit code: 0 done, 1 done but incomplete (failed
chunks, periods or inputs, recorded in its outputs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        help: One line for ``landslides --help``.
        options: ``module:Class``: the options dataclass.
        run: ``module:function``: ``run(options[, beam_args]) -> exit code``.
        beam: A Beam stage: Beam pipeline options are accepted after its own.
    """

    help: str
    options: str
    run: str
    beam: bool = False

    def options_class(self) -> type:
        return load(self.options)

    def runner(self) -> Any:
        return load(self.run)


def load(target: str) -> Any:
    """The object named by ``module:attribute``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


#: name -> command. Order is the order shown by --help.
COMMANDS: dict[str, Command] = {
    "demo": Command("Run the whole multi-temporal study on the synthetic world.",
                    "pipelines.demo:DemoConfig", "pipelines.demo:demo_command"),
    "synth": Command("Generate the synthetic mountain-valley world (imagery, DEM, "
                     "inventories).", "pipelines.options.synth:SynthOptions",
                     "pipelines.synth.world:synth_command"),
    "terrain": Command("Compute slope, aspect, curvature and hillshade COGs from a DEM.",
                       "pipelines.options.terrain:TerrainOptions",
                       "pipelines.terrain:terrain_command"),
    "export": Command("Export training patches (TFRecord shards + manifest) with Beam.",
                      "pipelines.options.export:ExportOptions",
                      "pipelines.export:export_command", beam=True),
    "import-l4s": Command("Convert a Landslide4Sense h5 folder into shards + manifest.",
                          "pipelines.options.import_l4s:ImportL4SOptions",
                          "pipelines.import_l4s:import_l4s_command", beam=True),
    "compare": Command("Compare landslide inventories: metrics, statistics, maps and a "
                       "report.", "pipelines.options.compare:CompareConfig",
                       "pipelines.compare.run:compare_command"),
    "train": Command("Train the U-Net on export shards and write a model artifact.",
                     "pipelines.options.train:TrainOptions",
                     "pipelines.training:train_command"),
    "evaluate": Command("Score a model artifact on shards: precision, recall, F1, IoU, "
                        "confusion.", "pipelines.options.train:EvaluateOptions",
                        "pipelines.training:evaluate_command"),
    "tune": Command("Grid search (lr x filters x batch size), ranked by validation F1.",
                    "pipelines.options.train:TuneOptions", "pipelines.training:tune_command"),
    "validate-precision": Command(
        "Score a model artifact at bf16 and int8 against fp32 on held-out patches; record "
        "which precisions predict may use.", "pipelines.options.train:ValidatePrecisionOptions",
        "pipelines.training:validate_precision_command"),
    "classify-train": Command("Train image classifiers (landslide / not) on keras.applications "
                              "backbones; compare them.",
                              "pipelines.options.classify:ClassifyTrainOptions",
                              "pipelines.classify:classify_train_command"),
    "classify-eval": Command("Score image classifiers: accuracy, precision, recall, specificity, "
                             "F1, ROC-AUC, one table.",
                             "pipelines.options.classify:ClassifyEvalOptions",
                             "pipelines.classify:classify_eval_command"),
    "explain": Command("Grad-CAM heat maps of a classifier or U-Net: PNG overlays and COGs.",
                       "pipelines.options.classify:ExplainOptions",
                       "pipelines.explain:explain_command"),
    "predict": Command("Sweep a region with a model: probability/mask COGs, mosaic, "
                       "inventory, STAC.", "pipelines.options.predict:PredictConfig",
                       "pipelines.predict.run:predict_command", beam=True),
    "scan": Command("Scheduled regional scan: predict + compare per period, trends, STAC.",
                    "pipelines.options.scan:ScanOptions", "pipelines.scan.run:scan_command",
                    beam=True),
    "plan": Command("Before a sweep: chunks, Earth Engine requests, time bound by the quota, "
                    "model compute, workers, wall time, cost and output sizes.",
                    "pipelines.options.plan:PlanOptions", "pipelines.plan:plan_command"),
}

__all__ = ["COMMANDS", "Command", "load"]
