"""``landslides classify-train|classify-eval``: run :mod:`model.classify` and print the tables.

Model errors reach :func:`pipelines.cli.main` (one line, exit code 2); TensorFlow errors
reading the data or writing the artifact are turned into the same kind of line by the
decorator shared with ``landslides train``.
"""

from __future__ import annotations

from model.classify.evaluation import evaluate_classifiers, table_text
from model.classify.fit import train_classifiers
from model.train.files import join
from pipelines.options.classify import ClassifyEvalOptions, ClassifyTrainOptions
from pipelines.training import reads_data


@reads_data("classify-train")
def classify_train_command(options: ClassifyTrainOptions) -> int:
    """``landslides classify-train``: one artifact per backbone and the validation table."""
    rows = train_classifiers(options.data, options.out, options.backbone, options.config())
    print(table_text(rows, "validation scores (calibrated threshold), best F1 first:"))
    if len(rows) > 1:
        print(f"artifacts in {options.out}/<backbone>/; table "
              f"{join(options.out, 'comparison.csv')}")
    else:
        print(f"artifact {options.out}")
    return 0


@reads_data("classify-eval", out_is_folder=False)
def classify_eval_command(options: ClassifyEvalOptions) -> int:
    """``landslides classify-eval``: score each artifact on the same data; one table."""
    results = evaluate_classifiers(options.model, options.data, split=options.split,
                                   out=options.out, threshold=options.threshold,
                                   batch_size=options.batch_size,
                                   allow_partial=options.allow_partial)
    first = results[0]
    print(table_text(results, f"{first['split']} split of {options.data} "
                              f"({first['examples']} images, {first['landslides']} "
                              f"landslides), best F1 first:"))
    for r in results:
        (tn, fp), (fn, tp) = r["confusion_matrix"]["matrix"]
        print(f"{r['backbone']}: confusion (rows truth, columns prediction; non_landslide, "
              f"landslide) [[{tn}, {fp}], [{fn}, {tp}]] at threshold {r['threshold']:.3f}; "
              f"{r['path']}")
    return 0


__all__ = ["classify_eval_command", "classify_train_command"]
