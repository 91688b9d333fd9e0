"""Image classifiers (landslide / not landslide) on ``keras.applications`` backbones.

``landslides classify-train --data DIR --out MODEL_DIR [--backbone B ...]`` trains one
classifier per backbone on image folders or patches of export shards; ``landslides
classify-eval`` scores them side by side; ``landslides explain`` shows what drives their
decisions (:mod:`model.explain`).

Modules, one job each:

* :mod:`~model.classify.config`: :class:`ClassifyConfig`, the settings of a run.
* :mod:`~model.classify.backbones`: the model: backbones by name, input normalisation,
  pretrained weights and their adaptation to multispectral bands.
* :mod:`~model.classify.data`: image folders and shard patches as ``tf.data`` splits.
* :mod:`~model.classify.fit`: the fine-tuning schedule and the artifact.
* :mod:`~model.classify.evaluation`: scores, ROC-AUC and the backbone comparison.
"""

from model.classify.config import ClassifyConfig

__all__ = ["ClassifyConfig"]
