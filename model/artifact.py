"""The self-describing model artifact: what training writes and inference loads.

A directory (local, or ``gs://`` through TensorFlow's file system support)::

    artifact.json     bands in order, normalisation, patch size, classes, threshold,
                      training config, validation metrics, the manifest it was trained on
    model.keras       the Keras model (loaded with safe_mode=True: nothing is unpickled)
    saved_model/      a TensorFlow SavedModel export for serving (optional for loading)

Inputs to the model are float32 pixels in physical units, in ``bands`` order; the
normalisation lives inside the model, so callers cannot mismatch it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.errors import ArtifactError

log = logging.getLogger(__name__)

FORMAT = "lsm-artifact/v1"
#: What a model does (``artifact.json`` ``task``): a landslide mask per pixel (the U-Net,
#: the default of artifacts without the key) or one class per image (a classifier).
SEGMENTATION, CLASSIFICATION = "segmentation", "classification"
META = "artifact.json"
KERAS_FILE = "model.keras"
SAVED_MODEL = "saved_model"


@dataclass
class Artifact:
    """A loaded model artifact.

    Attributes:
        path: Where it was loaded from.
        model: The Keras model (not compiled).
        meta: The full ``artifact.json`` content.
    """

    path: str
    model: Any
    meta: dict = field(default_factory=dict)
    _fn: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _warming: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.meta["bands"])

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def classes(self) -> dict[str, int]:
        return dict(self.meta.get("classes", {"background": 0, "landslide": 1}))

    @property
    def n_classes(self) -> int:
        return int(self.meta.get("n_classes", 1))

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (2 ** (depth - 1))."""
        return int(self.meta.get("size_multiple", 16))

    def predict(self, batch: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Landslide probability for a batch of ``(n, h, w, c)`` physical-unit pixels.

        Returns ``(n, h, w)`` float32: the sigmoid output, or for a multi-class model
        the probability of any landslide class (1 - P(background)).
        """
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] != len(self.bands):
            raise ArtifactError(
                f"Expected input (n, h, w, {len(self.bands)}) for bands {self.bands}, "
                f"got {x.shape}."
            )
        if len(x) == 0:
            return np.zeros(x.shape[:3], dtype=np.float32)
        warming = self._warming
        if warming is not None:
            warming.join()
        fn = self._inference_fn()
        step = max(1, int(batch_size))
        y = np.concatenate([np.asarray(fn(x[i:i + step]), dtype=np.float32)
                            for i in range(0, len(x), step)])
        if y.shape[-1] == 1:
            return y[..., 0]
        return 1.0 - y[..., 0]

    def warm_up(self, background: bool = False) -> None:
        """Trace the forward pass and run it once on one blank window.

        A model's first call costs about one batch's worth of time more than the next
        ones (tracing, then TensorFlow's graph optimisation); warming up pays it ahead,
        e.g. while a worker reads its first chunk.
        Idempotent. With ``background``, runs on a thread and returns at once;
        :meth:`predict` waits for it to finish.
        """
        with self._lock:
            if self._fn is not None or self._warming is not None:
                return
            if background:
                self._warming = threading.Thread(target=self._warm, name="model-warm-up",
                                                 daemon=True)
                self._warming.start()
                return
        self._warm()

    def _warm(self) -> None:
        try:
            side = self.patch_size
            self._inference_fn()(np.zeros((1, side, side, len(self.bands)), np.float32))
        except Exception as exc:  # predict raises it again, where a caller handles it
            log.warning("Warming up model %s failed: %s: %s", self.model_id,
                        type(exc).__name__, exc)

    def __getstate__(self) -> dict:
        warming = self._warming
        if warming is not None:
            warming.join()
        state = dict(self.__dict__)
        state["_fn"] = None  # a traced graph does not pickle; it is rebuilt on first use
        state["_lock"] = state["_warming"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _inference_fn(self) -> Any:
        """The model's forward pass as one graph for any batch and window size.

        Traced once (its input signature leaves batch, height and width open), unlike
        ``Model.predict``, which builds a dataset per call and traces again for the last,
        smaller batch (``bench/predict.py`` measures the model's throughput).
        """
        if self._fn is None:
            import tensorflow as tf

            model = self.model
            fn = tf.function(
                lambda t: model(t, training=False), reduce_retracing=True,
                input_signature=[tf.TensorSpec([None, None, None, len(self.bands)],
                                               tf.float32)])
            with self._lock:
                if self._fn is None:
                    self._fn = fn
        return self._fn


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else: str)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def model_id_of(meta: Mapping[str, Any], weights_digest: str) -> str:
    """A short deterministic id from the training config and the weights."""
    h = hashlib.sha256()
    h.update(json.dumps(meta.get("training", {}), sort_keys=True, default=json_default).encode())
    h.update(weights_digest.encode())
    return f"lsm-{h.hexdigest()[:12]}"


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _is_remote(path: str) -> bool:
    return "://" in path


def save_artifact(
    model: Any,
    out: str,
    bands: Sequence[str],
    patch_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Mapping[str, int] | None = None,
    threshold: float = 0.5,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    pixel_size: float | None = None,
    size_multiple: int = 16,
    saved_model: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Write the artifact directory; returns the ``artifact.json`` content.

    Files are written into a local temporary folder first and then moved (or copied to
    ``gs://`` with ``tf.io.gfile``), with ``artifact.json`` last, so a reader that finds
    ``artifact.json`` finds a complete artifact.
    """
    import keras

    classes = dict(classes or {"background": 0, "landslide": 1})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bands": list(bands),
        "patch_size": int(patch_size),
        "pixel_size": pixel_size,
        "normalization": {"mean": list(map(float, mean)) if mean is not None else None,
                          "std": list(map(float, std)) if std is not None else None,
                          "inside_model": True},
        "classes": classes,
        "n_classes": 1 if len(classes) <= 2 else len(classes),
        "threshold": float(threshold),
        "size_multiple": int(size_multiple),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "manifest": dict(manifest or {}),
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend()},
        **dict(extra or {}),
    }
    meta["model_id"] = model_id_of(meta, _weights_digest(model))
    with tempfile.TemporaryDirectory(prefix="lsm-artifact-") as tmp:
        model.save(os.path.join(tmp, KERAS_FILE))
        files = [KERAS_FILE]
        if saved_model:
            try:
                model.export(os.path.join(tmp, SAVED_MODEL), format="tf_saved_model",
                             verbose=False)
                files.append(SAVED_MODEL)
            except Exception as exc:  # serving export is optional; the Keras file is the truth
                log.warning("SavedModel export failed (%s); the artifact has model.keras only",
                            exc)
        meta["files"] = files
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True, default=json_default)
        _publish(tmp, out, [*files, META])
    log.info("Saved model artifact %s to %s", meta["model_id"], out)
    return meta


def _publish(tmp: str, out: str, names: Sequence[str]) -> None:
    if _is_remote(out):
        import tensorflow as tf

        for name in names:
            src = os.path.join(tmp, name)
            if os.path.isdir(src):
                for root, _, fs in os.walk(src):
                    for fn in fs:
                        rel = os.path.relpath(os.path.join(root, fn), tmp)
                        tf.io.gfile.makedirs(os.path.dirname(f"{out.rstrip('/')}/{rel}"))
                        tf.io.gfile.copy(os.path.join(root, fn), f"{out.rstrip('/')}/{rel}",
                                         overwrite=True)
            else:
                tf.io.gfile.copy(src, f"{out.rstrip('/')}/{name}", overwrite=True)
        return
    os.makedirs(out, exist_ok=True)
    for name in names:  # artifact.json is last: its presence means "complete"
        dst = os.path.join(out, name)
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        staging = dst + ".partial"
        if os.path.isdir(os.path.join(tmp, name)):
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(os.path.join(tmp, name), staging)
        else:
            shutil.copyfile(os.path.join(tmp, name), staging)
        os.replace(staging, dst)


def task_of(meta: Mapping[str, Any]) -> str:
    """``segmentation`` or ``classification``: what the artifact's model does."""
    return str(meta.get("task") or SEGMENTATION)


def require_segmentation(meta: Mapping[str, Any], path: str, what: str) -> None:
    """Refuse an image classifier where a segmentation model is needed.

    Raises:
        ArtifactError: naming the artifact, what it is and which commands take it.
    """
    if task_of(meta) != SEGMENTATION:
        raise ArtifactError(
            f"{path!r} is an image classifier (landslides classify-train): it gives one class "
            f"per image, and {what} needs a segmentation model trained with `landslides "
            f"train`. Score or explain the classifier with `landslides classify-eval` or "
            f"`landslides explain`")


def read_meta(path: str) -> dict:
    """Read and check ``artifact.json`` without loading the model."""
    import tensorflow as tf

    meta_path = f"{path.rstrip('/')}/{META}"
    if not tf.io.gfile.exists(meta_path):
        raise ArtifactError(
            f"{path!r} is not a model artifact: {META} is missing. Train one with "
            f"`landslides train`, or point at the folder that holds {META}."
        )
    try:
        with tf.io.gfile.GFile(meta_path, "r") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{meta_path!r} is corrupt ({exc}); re-export the artifact.") from exc
    if meta.get("format") != FORMAT:
        raise ArtifactError(
            f"{meta_path!r} has format {meta.get('format')!r}; this version reads {FORMAT!r}."
        )
    for key in ("bands", "patch_size", "model_id"):
        if key not in meta:
            raise ArtifactError(f"{meta_path!r} lacks {key!r}; the artifact is incomplete.")
    return meta


def check_files(path: str) -> dict:
    """``artifact.json``, once the Keras file is checked without building the model.

    What a launcher needs before handing the artifact to workers that load it: the
    metadata is read and checked, ``model.keras`` is opened as the zip archive it is, its
    checksums are verified and its config is read, and the model's input channels are
    compared with the bands. Nothing is deserialised into Keras objects (no TensorFlow
    graph, no weights in memory), so it costs milliseconds where loading costs a second.

    Raises:
        ArtifactError: missing, corrupt or inconsistent artifact (the messages of
            :func:`load_artifact`).
    """
    meta = read_meta(path)
    keras_path = f"{path.rstrip('/')}/{KERAS_FILE}"
    try:
        if _is_remote(path):
            import tensorflow as tf

            with tf.io.gfile.GFile(keras_path, "rb") as f:
                raw = io.BytesIO(f.read())
            archive = zipfile.ZipFile(raw)
        else:
            archive = zipfile.ZipFile(keras_path)
        with archive:
            broken = archive.testzip()
            if broken is not None:
                raise zipfile.BadZipFile(f"member {broken!r} fails its checksum")
            config = json.loads(archive.read("config.json"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{keras_path!r} is missing; the artifact is incomplete.") from exc
    except Exception as exc:  # a damaged zip, a missing member, bad JSON, a read error
        raise ArtifactError(
            f"Cannot load the Keras model {keras_path!r}: {type(exc).__name__}: {exc}. "
            f"The file is corrupt or was written by an incompatible version "
            f"({meta.get('versions')})."
        ) from exc
    layers = (config.get("config") or {}).get("layers") or []
    shape = next((la["config"].get("batch_shape") for la in layers
                  if la.get("class_name") == "InputLayer"), None)
    if shape and shape[-1] is not None and int(shape[-1]) != len(meta["bands"]):
        raise ArtifactError(
            f"{path!r}: the model takes {shape[-1]} bands but artifact.json lists "
            f"{len(meta['bands'])} ({meta['bands']}); the artifact is inconsistent."
        )
    return meta


def update_artifact(path: str, updates: Mapping[str, Any],
                    files: Mapping[str, bytes] | None = None) -> dict:
    """Add files to an artifact and merge ``updates`` into its ``artifact.json``.

    The model and its id are unchanged. The new files are published first and
    ``artifact.json`` last, each atomically (as :func:`save_artifact` does), so a reader
    never sees metadata naming a file that is not there yet.

    Returns:
        The new ``artifact.json`` content.
    """
    meta = read_meta(path)
    meta.update(updates)
    names = list(files or {})
    meta["files"] = [*[f for f in meta.get("files", []) if f not in names], *names]
    with tempfile.TemporaryDirectory(prefix="lsm-artifact-") as tmp:
        for name, blob in (files or {}).items():
            with open(os.path.join(tmp, name), "wb") as out:
                out.write(blob)
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True, default=json_default)
        _publish(tmp, path, [*names, META])
    return meta


#: Artifacts loaded by this process, keyed by local path and file stamps (see below)
_LOADED: OrderedDict[tuple, Artifact] = OrderedDict()
_LOADED_MAX = 2
_LOADED_LOCK = threading.Lock()


def _stamp(path: str) -> tuple | None:
    """``(path, (mtime_ns, size) of each file)`` of a local artifact; None if remote."""
    if _is_remote(path):
        return None
    root = os.path.abspath(path)
    try:
        stats = [os.stat(os.path.join(root, name)) for name in (META, KERAS_FILE)]
    except OSError:
        return None
    return (root, *((s.st_mtime_ns, s.st_size) for s in stats))


def load_artifact(path: str) -> Artifact:
    """Load an artifact with Keras safe mode (no pickled code is executed).

    A local artifact loaded before by this process, and unchanged since (same file
    times and sizes), is returned from memory: a DirectRunner sweep validates the
    artifact on the launcher and then needs it on its in-process worker.
    The returned object is shared: do not change its model in place (fine-tuning copies
    the weights into a new model).

    Raises:
        ArtifactError: missing, corrupt or incompatible artifact.
    """
    stamp = _stamp(path)
    if stamp is None:
        return _load_artifact(path)
    with _LOADED_LOCK:  # threads of one worker (DirectRunner multi_threading) share it
        if stamp not in _LOADED:
            _LOADED[stamp] = _load_artifact(path)
            while len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end(stamp)
        return _LOADED[stamp]


def _load_artifact(path: str) -> Artifact:
    import keras
    import tensorflow as tf

    # importing these registers the custom layers/losses/metrics for safe deserialisation
    import model.losses
    import model.metrics
    import model.unet  # noqa: F401

    meta = read_meta(path)
    keras_path = f"{path.rstrip('/')}/{KERAS_FILE}"
    with tempfile.TemporaryDirectory(prefix="lsm-load-") as tmp:
        local = keras_path
        if _is_remote(path):
            local = os.path.join(tmp, KERAS_FILE)
            tf.io.gfile.copy(keras_path, local, overwrite=True)
        if not os.path.exists(local):
            raise ArtifactError(f"{keras_path!r} is missing; the artifact is incomplete.")
        try:
            mdl = keras.saving.load_model(local, compile=False, safe_mode=True)
        except Exception as exc:
            raise ArtifactError(
                f"Cannot load the Keras model {keras_path!r}: {type(exc).__name__}: {exc}. "
                f"The file is corrupt or was written by an incompatible version "
                f"({meta.get('versions')})."
            ) from exc
    n_in = mdl.inputs[0].shape[-1]
    if n_in != len(meta["bands"]):
        raise ArtifactError(
            f"{path!r}: the model takes {n_in} bands but artifact.json lists "
            f"{len(meta['bands'])} ({meta['bands']}); the artifact is inconsistent."
        )
    return Artifact(path=path, model=mdl, meta=meta)
