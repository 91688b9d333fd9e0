"""Training, evaluation, grid search and transfer learning of the landslide U-Net.

``landslides train --data SHARDS --out MODEL_DIR [--config train.yaml]``::

    MODEL_DIR/
      artifact.json  model.keras  saved_model/   the artifact (see model.artifact)
      history.csv                                 one row per epoch (Keras CSVLogger)
      logs/                                       TensorBoard logs
      _backup/                                    last/best checkpoint + state while running

* Hyper-parameters are one frozen :class:`TrainConfig`, loadable from YAML; CLI flags
  override the YAML; validated before anything is read. The resolved config is saved in the
  artifact's ``training``.
* Adam, the configured loss, landslide precision/recall/F1/IoU (at 0.5) and ``f1_best``,
  the F1 at the best decision threshold (:class:`BestThresholdF1`). Early stopping,
  reduce-on-plateau and the best checkpoint follow ``val_f1_best`` (:data:`MONITOR`): the
  threshold is calibrated after training anyway, and F1 at a fixed 0.5 rewards the early
  "everything is a landslide" epochs while the outputs' calibration still drifts.
* Resume: every epoch end writes the last weights (with the optimizer state), the best
  weights and the callbacks' state (best F1, patience counters, learning rate) to
  ``_backup/``, with a fingerprint of what the run reads (the shards' manifest, names and
  sizes, the ``init_from`` model id). A run started again on the same ``--out`` with the
  same configuration and the same inputs continues from the epoch after the last one saved
  (``epochs`` may be raised to train longer); other settings or other shards are refused.
  The backup is deleted once the artifact is written.
* The decision threshold is calibrated on the whole validation split (best F1) and the
  validation metrics at that threshold are stored in the artifact's ``metrics``.
* Transfer learning: ``init_from`` starts from an artifact: same bands by name, made the
  same way (the same references under those names) and labelled with its classes (else an
  error naming the difference; a binary model takes multi-class shards only with
  ``n_classes: 1``), its architecture and normalisation, its weights; another pixel size is
  warned about, not refused (fine-tuning across resolutions can be meant);
  ``freeze_encoder`` keeps the encoder fixed; the default learning rate drops to 1e-4.
* Validation shards of their own (``val_data``) must be made like the training shards:
  the same bands, references, pixel size and classes (else an error naming both).

Modules, one job each:

* :mod:`~model.train.config`: :class:`TrainConfig`, its validation, YAML and ``--augment``.
* :mod:`~model.train.fit`: :func:`train`, the run itself.
* :mod:`~model.train.inputs`: what a run takes from the shards (completeness, classes,
  input stack, caching).
* :mod:`~model.train.transfer`: ``init_from``.
* :mod:`~model.train.selection`: ``f1_best`` and the threshold calibration.
* :mod:`~model.train.resume`: the ``_backup/`` checkpoints and resumption.
* :mod:`~model.train.callbacks`: the per-epoch log line and TensorBoard scalars.
* :mod:`~model.train.evaluation`: :func:`evaluate`.
* :mod:`~model.train.tuning`: :func:`tune`, the grid search.
* :mod:`~model.train.precision`: :func:`validate_precisions`, held-out F1 at bf16 and int8.
* :mod:`~model.train.files`: atomic writes and folder copies, local or ``gs://``.
"""

from model.train.config import CACHE_MODES, TrainConfig, load_config, parse_augment
from model.train.evaluation import EVALUATION, evaluate
from model.train.fit import BACKUP, DEFAULT_LR, FINE_TUNE_LR, HISTORY, LOGS, train
from model.train.inputs import CACHE_LIMIT_BYTES, check_complete
from model.train.precision import validate_precisions
from model.train.selection import MONITOR, BestThresholdF1, calibrate
from model.train.transfer import architecture_of
from model.train.tuning import TUNING, tune

__all__ = [
    "BACKUP",
    "CACHE_LIMIT_BYTES",
    "CACHE_MODES",
    "DEFAULT_LR",
    "EVALUATION",
    "FINE_TUNE_LR",
    "HISTORY",
    "LOGS",
    "MONITOR",
    "TUNING",
    "BestThresholdF1",
    "TrainConfig",
    "architecture_of",
    "calibrate",
    "check_complete",
    "evaluate",
    "load_config",
    "parse_augment",
    "train",
    "tune",
    "validate_precisions",
]
