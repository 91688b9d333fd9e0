"""Where training runs: the ``tf.distribute`` strategy and the mixed-precision policy.

* ``default``: the one-device default strategy (CPU, or a single GPU).
* ``mirrored``: :class:`tf.distribute.MirroredStrategy` over every local GPU.
* ``tpu``: :class:`tf.distribute.TPUStrategy` on the TPU named by ``tpu`` (a name, a
  ``grpc://`` address, or ``local``/empty for a TPU VM).
* ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy`, the cluster read from
  the ``TF_CONFIG`` environment variable (set by Vertex AI and Kubernetes operators).
* ``auto``: ``tpu`` when a TPU is named, ``multiworker`` when ``TF_CONFIG`` describes more
  than one worker, ``mirrored`` with more than one GPU, else ``default``.

Mixed precision (``auto``) is only switched on where it pays: ``mixed_float16`` on GPUs,
``mixed_bfloat16`` on TPUs; CPUs train in float32. ``mixed_bfloat16`` may be asked for on
a CPU: with native bfloat16 arithmetic (AVX512_BF16 or AMX, :func:`model.cpu.cpu_has_bf16`) its
train steps are faster than float32 (``bench/train.py`` measures both), without it they
are emulated and slower (a warning says so). It is not the CPU default: it changes the
numbers a run trains to. The U-Net keeps its normalisation and
its output activation in float32 either way (see :mod:`model.unet`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

import keras
import tensorflow as tf

from model.cpu import BF16_CPU_FLAGS, cpu_has_bf16
from model.errors import ConfigError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "tpu", "multiworker")
PRECISIONS = ("auto", "off", "float32", "mixed_float16", "mixed_bfloat16")


def tf_config_workers(environ: dict[str, str] | None = None) -> int:
    """Number of workers (chief included) that ``TF_CONFIG`` describes; 0 without it.

    Raises:
        ConfigError: when ``TF_CONFIG`` is set but is not the JSON cluster spec.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
        return len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"TF_CONFIG is not a JSON cluster spec ({exc}): expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from exc


def choose_strategy(name: str = "auto", tpu: str | None = None) -> tf.distribute.Strategy:
    """Create the distribution strategy ``name`` (see the module docstring).

    Args:
        name: One of :data:`STRATEGIES`.
        tpu: TPU name or address for ``tpu`` (``None``/``local`` on a TPU VM).

    Raises:
        ConfigError: for an unknown name, ``multiworker`` without ``TF_CONFIG``, or a TPU
            that cannot be reached.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        if tpu:
            name = "tpu"
        elif tf_config_workers() > 1:
            name = "multiworker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu="" if tpu in (None, "local") else tpu
            )
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as exc:
            raise ConfigError(
                f"cannot reach the TPU {tpu!r} ({exc}): pass --tpu NAME (or run on a TPU VM), "
                "or train with --strategy default"
            ) from exc
        strategy: tf.distribute.Strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "multiworker":
        if tf_config_workers() == 0:
            raise ConfigError(
                "strategy 'multiworker' needs the TF_CONFIG environment variable describing "
                "the cluster; set it or use --strategy mirrored/default"
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logger.info("distribution strategy %s with %d replica(s)", type(strategy).__name__,
                strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs: always, except on non-chief multi-worker tasks.

    The chief is the ``chief`` task, or worker 0 when the cluster has no chief.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def accelerator(strategy: tf.distribute.Strategy) -> str | None:
    """``"tpu"``, ``"gpu"`` or ``None`` (CPU) for the devices ``strategy`` runs on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    if tf.config.list_physical_devices("GPU"):
        return "gpu"
    return None


def precision_policy(setting: str, strategy: tf.distribute.Strategy,
                     cpu_bf16: bool | None = None) -> str:
    """The Keras dtype policy name for ``setting`` (one of :data:`PRECISIONS`) on ``strategy``.

    ``auto`` gives ``mixed_float16`` on GPUs, ``mixed_bfloat16`` on TPUs and ``float32``
    on CPUs; ``off`` is ``float32``; a policy name is taken as is (a mixed policy that is
    slower than float32 on this CPU is allowed, with a warning).

    Args:
        setting: One of :data:`PRECISIONS`.
        strategy: Where training runs.
        cpu_bf16: Whether the CPU has native bfloat16, for the warning (default:
            :func:`model.cpu.cpu_has_bf16`).
    """
    if setting not in PRECISIONS:
        raise ConfigError(f"mixed_precision must be one of {PRECISIONS}, got {setting!r}")
    device = accelerator(strategy)
    if setting == "auto":
        return {"gpu": "mixed_float16", "tpu": "mixed_bfloat16"}.get(device or "", "float32")
    if setting == "off":
        return "float32"
    if device is None and setting != "float32":
        native = cpu_has_bf16() if cpu_bf16 is None else cpu_bf16
        if setting == "mixed_float16" or not native:
            logger.warning("mixed precision %s on this CPU is slower than float32 (float16 is "
                           "emulated on CPUs; bfloat16 needs one of the CPU flags %s)",
                           setting, ", ".join(BF16_CPU_FLAGS))
    return setting


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set Keras' global dtype policy inside the block and restore the previous one after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
