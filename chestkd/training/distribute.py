"""Distribution strategies: one device, all local GPUs, or several machines.

``distribute`` (a configuration key) picks the ``tf.distribute`` strategy a run trains under:

* ``auto`` (default): ``MirroredStrategy`` over all local GPUs when there are several, else the
  default (one device) strategy;
* ``none``: the default strategy;
* ``mirrored``: ``MirroredStrategy`` over all local GPUs (the tested multi-GPU path);
* ``multi_worker``: ``MultiWorkerMirroredStrategy``, synchronous data parallelism over several
  processes (machines), each with its local GPUs (or its CPU). The cluster is read from the
  ``TF_CONFIG`` environment variable.

Multi-worker training, what it asks of the user
-----------------------------------------------
* Start ONE process per worker, all with the SAME command and configuration (same
  ``batch_size``: it is the GLOBAL batch, split evenly over all replicas of all workers; same
  ``seed``), each with its own ``TF_CONFIG``, identical except for the task index, e.g. on the
  first of two machines::

      TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                  "task": {"type": "worker", "index": 0}}' python -m chestkd.recipes.... \\
          distribute=multi_worker

  and ``"index": 1`` on ``host2``. Every address must be reachable from every worker. The
  processes wait for each other at start-up and at every step: training starts once all are
  up, and if one dies the others wait (kill them).
* The strategy must be created when the program starts, before TensorFlow runs any operation
  (each process joins the collective-ops cluster once, when TensorFlow starts; otherwise
  TensorFlow raises ``RuntimeError: Collective ops must be configured at program startup``,
  reported here as a ConfigError): call :func:`distribution_strategy` (or
  :func:`multi_worker_strategy`) first thing in the program, right after reading the
  configuration. Importing chestkd, Keras or TensorFlow and seeding
  (``keras.utils.set_random_seed``) are fine before it. The strategy is created once per
  process: later calls return the same one.
* Worker 0 is the chief (or the task of type ``chief`` when the cluster has one). Only the
  chief should write the run's files: the other workers would write the same files, and on a
  shared file system clobber them. Keras 3's callbacks (``BackupAndRestore``, ``CSVLogger``,
  ``TensorBoard``, ``ModelCheckpoint``) and chestkd's ``StudentCheckpoint`` know nothing of
  workers: each writes on every worker. :func:`worker_run_dir` gives a non-chief worker a
  temporary folder of its own to hand to ``fit`` instead of the run directory (what Keras'
  multi-worker guide recommends for ``ModelCheckpoint`` and ``BackupAndRestore``); every
  worker still runs every callback: their decisions come from the (global) epoch logs, so
  all workers take the same ones, and saving a model's state reads distributed variables,
  which can involve collective operations all workers must join. To resume,
  :func:`worker_run_dir` copies the chief's ``backup/`` into a non-chief worker's folder (it
  must be visible to that worker: a shared file system, or copy it there first).
* Datasets: ``fit`` distributes the dataset each worker built with
  ``experimental_distribute_dataset``. chestkd's pipeline starts from ``tf.data.Dataset.range``
  (no files), so TensorFlow's AUTO sharding falls back to DATA sharding (and logs so);
  :func:`shard_policy_for` sets DATA explicitly. With DATA sharding TensorFlow first rebatches
  every GLOBAL batch into per-replica batches (``batch_size / num_replicas`` each) and worker
  ``i`` keeps the ``i``-th of them: the workers together see exactly the global batch a single
  process sees, provided every worker builds the SAME pipeline (same ``batch_size``, the
  global one, and same ``seed``, hence the same order and flips). A LATER batch that
  does not divide evenly (the last, partial one) is split unevenly, and the replicas' mean
  losses are averaged with equal weights, as under ``MirroredStrategy``; the FIRST batch of
  every ``fit`` and ``evaluate`` must divide evenly (Keras' first read, below). On a CPU, a
  last batch with fewer images than replicas fails (TensorFlow's oneDNN kernels reject a
  replica's empty batch, ``Matrix size-incompatible: In[0]: [0,3]``; with
  ``TF_ENABLE_ONEDNN_OPTS=0`` it runs): keep ``len(split) % batch_size`` at 0 or at least
  the replica count there.
* What equals what (tests/test_multi_worker.py, 2 CPU workers vs 1 process, to ~1e-6):
  epoch losses and metrics, per-step losses and the trained weights. Three Keras behaviours
  to know:

  - under any strategy with several replicas (``mirrored``, ``auto`` with 2+ GPUs,
    ``multi_worker``), Keras 3.15 (``_maybe_symbolic_build``) averages the FIRST batch of
    each ``fit`` and ``evaluate`` over the replicas with ``strategy.reduce("MEAN", batch,
    axis=None)``, which fails (``InvalidArgumentError ... AddN ... [5,32,32,3] !=
    [4,32,32,3]``) when that batch does not split evenly: ``batch_size`` must be a multiple
    of the replica count, and :func:`chestkd.training.fit` checks it and splits a
    validation split smaller than one batch into two batches (:func:`even_first_batches`);
  - under ANY strategy, Keras' ``fit`` first draws a batch from a throw-away iterator of the
    training data (``TensorFlowTrainer._maybe_symbolic_build``), and chestkd's pipeline
    reshuffles and redraws its flips at every iteration: so epoch ``e`` sees the order and
    flips that epoch ``e + 1`` sees without a strategy (equally random, not identical);
  - the per-step logs (progress bar, ``on_train_batch_end``) are each worker's own running
    metrics averaged over workers: right for mean losses, not for AUC. Epoch logs (history,
    checkpoint decisions) read the summed metric state: global and exact.
* Keras 3.15 with TensorFlow 2.21 cannot run ``fit`` under a plain
  ``tf.distribute.MultiWorkerMirroredStrategy`` (keras-team/keras#20585); chestkd creates
  :class:`KerasMultiWorkerMirroredStrategy`, which works around the two failures.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from chestkd.errors import ConfigError

MODES = ("auto", "none", "mirrored", "multi_worker")
TF_CONFIG = "TF_CONFIG"
_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')

_multi_worker = None  # the process's one MultiWorkerMirroredStrategy


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce(op, nest, axis=None)`` accepts a nest.

    Keras 3 (``TensorFlowTrainer._maybe_symbolic_build``, called by ``fit``, ``evaluate`` and
    ``predict`` for a model created under a strategy) reduces the first distributed batch,
    an ``(x, y)`` tuple of ``PerReplica`` values, with ``strategy.reduce("MEAN", batch,
    axis=None)`` to get shapes to build the model with. ``MirroredStrategy`` maps the reduction
    over the structure; TensorFlow's ``CollectiveAllReduceExtended._reduce_to`` does not and
    fails in ``cross_device_ops._make_tensor_into_per_replica`` with ``ValueError: Attempt to
    convert a value (PerReplica:{...}) with an unsupported type (<class '...PerReplica'>) to a
    Tensor`` (keras-team/keras#20585). Here each leaf is reduced on its own, as
    ``MirroredStrategy`` does.

    Then every training step fails: Keras' ``reduce_per_replica`` (``reduction="auto"`` is
    ``"mean"``) reduces each metric result under multi-worker training with
    ``strategy.reduce("MEAN", v, axis=0)``, and a metric result is a scalar: ``ValueError:
    Invalid reduction dimension 0 for input with 0 dimensions``. Here a scalar per replica is
    reduced across replicas only (``axis=None``), as ``MirroredStrategy``'s path does
    (``tf.reduce_mean`` of the replicas' values).
    """

    def reduce(self, reduce_op, value, axis):
        if tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        if axis is not None and _per_replica_rank(value) == 0:
            axis = None  # a scalar per replica: reduce across replicas only
        return super().reduce(reduce_op, value, axis)


def _per_replica_rank(value):
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    shape = getattr(value, "shape", None)
    return None if shape is None else tf.TensorShape(shape).rank


def distribution_strategy(mode: str = "auto"):
    """The ``tf.distribute`` strategy of the ``distribute`` option (see the module docstring).

    ``auto``: MirroredStrategy over all GPUs when there are several, else the default strategy.
    """
    if mode not in MODES:
        raise ConfigError(f"--distribute {mode!r}: choose {', '.join(MODES[:-1])} or "
                          f"{MODES[-1]}")
    if mode == "multi_worker":
        return multi_worker_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def read_tf_config(environ=None) -> dict:
    """The parsed and checked ``TF_CONFIG`` of this process.

    Raises:
        ConfigError: naming ``TF_CONFIG`` and what is expected, when it is missing, not JSON,
            or does not describe a cluster with this process's task in it.
    """
    environ = os.environ if environ is None else environ
    expected = (f"; expected JSON like {_TF_CONFIG_EXAMPLE} (the same cluster on every worker, "
                f"each with its own task index)")
    text = environ.get(TF_CONFIG)
    if not text or not text.strip():
        raise ConfigError(f"distribute=multi_worker needs the {TF_CONFIG} environment variable, "
                          f"which is not set{expected}")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({error}){expected}") from None
    if not isinstance(tf_config, dict):
        raise ConfigError(f"{TF_CONFIG} must be a JSON object, got {text!r}{expected}")
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(f"{TF_CONFIG} has no 'cluster' mapping of task type to addresses"
                          f"{expected}")
    if "worker" not in cluster and "chief" not in cluster:
        raise ConfigError(f"{TF_CONFIG}: 'cluster' lists no 'worker' (nor 'chief') tasks, got "
                          f"task types {sorted(cluster)}{expected}")
    for kind, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit()
                           and a.rpartition(":")[0] for a in addresses)):
            raise ConfigError(f"{TF_CONFIG}: cluster[{kind!r}] must be a non-empty list of "
                              f"'host:port' strings, got {addresses!r}{expected}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f"{TF_CONFIG} has no 'task' with a 'type' and an 'index' (this "
                          f"process's place in the cluster), got {task!r}{expected}")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise ConfigError(f"{TF_CONFIG}: task type {kind!r} is not in the cluster (task types "
                          f"{sorted(cluster)}){expected}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(
            cluster[kind]):
        raise ConfigError(f"{TF_CONFIG}: task index {index!r} is not one of 0..."
                          f"{len(cluster[kind]) - 1} (the {kind!r} tasks of the cluster)"
                          f"{expected}")
    return tf_config


def multi_worker_strategy():
    """This process's ``MultiWorkerMirroredStrategy`` (created on the first call, then reused).

    Call it at program start, before any other TensorFlow operation.
    """
    global _multi_worker
    if _multi_worker is None:
        read_tf_config()  # a clear error before TensorFlow reads TF_CONFIG itself
        try:
            _multi_worker = KerasMultiWorkerMirroredStrategy()
        except RuntimeError as error:
            raise ConfigError(
                f"distribute=multi_worker: could not create MultiWorkerMirroredStrategy "
                f"({error}); it must be created at program start, before TensorFlow runs "
                f"any operation") from error
    return _multi_worker


def in_multi_worker_mode(strategy=None) -> bool:
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def is_chief(strategy=None) -> bool:
    """True for the worker that writes the run's files: the only process without multi-worker
    training, else the ``chief`` task, or worker 0 when the cluster has no chief."""
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    if not in_multi_worker_mode(strategy):
        return True
    resolver = strategy.cluster_resolver
    kind, index = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return kind == "chief" or (not has_chief and kind == "worker" and index == 0) or kind is None


def worker_run_dir(run_dir, strategy=None) -> Path:
    """Where this worker writes ``run_dir``'s files.

    The chief (and any run without multi-worker training) writes ``run_dir`` itself. Any
    other worker gets a new temporary folder of its own
    (``<tmp>/chestkd-<type><index>-<run name>-<random>``); when ``run_dir`` already holds a
    ``BackupAndRestore`` state (``backup/``, a resumed run on a file system the workers
    share) and the best-so-far record (``best.json``), they are copied in, so every worker
    resumes at the chief's epoch (a worker starting over while the others resume would
    deadlock the collectives). Remove the folder after training with
    :func:`remove_worker_dir`.
    """
    run_dir = Path(run_dir)
    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    folder = Path(tempfile.mkdtemp(
        prefix=f"chestkd-{resolver.task_type}{resolver.task_id}-{run_dir.name}-"))
    if (run_dir / "backup").is_dir():
        shutil.copytree(run_dir / "backup", folder / "backup")
    if (run_dir / "best.json").is_file():
        shutil.copy2(run_dir / "best.json", folder / "best.json")
    return folder


def remove_worker_dir(folder, run_dir) -> None:
    """Remove a non-chief worker's temporary folder (no-op on the chief's ``run_dir``)."""
    if Path(folder).resolve() != Path(run_dir).resolve():
        shutil.rmtree(folder, ignore_errors=True)


def shard_policy_for(dataset: tf.data.Dataset, strategy=None) -> tf.data.Dataset:
    """``dataset`` with ``auto_shard_policy = DATA`` under multi-worker training (unchanged
    otherwise): each worker keeps its share of every GLOBAL batch. chestkd's pipeline reads no
    files (it maps indices from ``Dataset.range``), so FILE sharding is impossible and AUTO
    falls back to DATA anyway; setting it says so and silences the fallback warning."""
    if not in_multi_worker_mode(strategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def even_first_batches(train_ds, val_ds, batch_size: int, strategy, mode: str = "auto"):
    """``(train_ds, val_ds)`` whose first batches split evenly over ``strategy``'s replicas.

    Keras 3.15 averages the first batch of each ``fit`` and ``evaluate`` over the replicas
    (``TensorFlowTrainer._maybe_symbolic_build``: ``strategy.reduce("MEAN", batch,
    axis=None)``, only to read its shapes), and that sum of the replicas' shards fails when
    they differ in size; later batches may split unevenly. So with several replicas:

    * ``batch_size`` (the global batch) must be a multiple of the replica count, else
      ConfigError: every full batch would be split unevenly, the first one included;
    * a validation split smaller than one batch whose size does not divide is split into two
      batches, a multiple of the replica count first and at least one image per replica in
      the second (9 images on 2 replicas: 6 and 3). Validation losses and AUC do not change:
      they are means over the images. With fewer than twice as many images as replicas
      there is no such split: ConfigError;
    * a training split smaller than one batch must divide (ConfigError): splitting it would
      double the steps per epoch that the learning-rate schedule counts.

    Both datasets hold ``(x, y[, w])`` batches (any ``x`` structure). The validation set is
    not shuffled, so reading its first batch here changes nothing; the training set is read
    only when it is a single batch (its size is then unknown), which moves its shuffle on by
    one iteration, as Keras' own first read does.
    """
    replicas = int(strategy.num_replicas_in_sync)
    if replicas == 1:
        return train_ds, val_ds
    batch_size = int(batch_size)
    where = f"with {replicas} replicas (distribute={mode})"
    if batch_size % replicas:
        raise ConfigError(f"--batch-size {batch_size}: {where} the first batch of each fit "
                          f"must split evenly over the replicas; use a multiple of {replicas}")
    # Several batches: the first one is full, so it divides.
    size = batch_size if int(train_ds.cardinality()) != 1 else _first_batch_size(train_ds)
    if size % replicas:
        raise ConfigError(f"--batch-size {batch_size}: {where} the first train batch ({size} "
                          f"images, the whole train split) must split evenly; use a train "
                          f"split of a multiple of {replicas} images, or distribute=none")
    if val_ds is None:
        return train_ds, val_ds
    size = _first_batch_size(val_ds)
    remainder = size % replicas
    if remainder and size < 2 * replicas:
        raise ConfigError(f"--batch-size {batch_size}: {where} the first val batch ({size} "
                          f"images, the whole val split) must split evenly; use a val split "
                          f"of a multiple of {replicas} or at least {2 * replicas} images, "
                          f"or distribute=none")
    if remainder:
        # Only a split smaller than one batch gets here (a full batch divides): it is one
        # batch, so rebatch's two sizes make its two batches. The second keeps at least one
        # image per replica: on a CPU, TensorFlow's oneDNN kernels fail on a replica given
        # none (9 images on 2 replicas: 6 + 3, not 8 + 1).
        first = size - remainder - replicas
        val_ds = val_ds.rebatch([first, size - first]).apply(
            tf.data.experimental.assert_cardinality(2))
    return train_ds, val_ds


def _first_batch_size(dataset) -> int:
    for batch in dataset.take(1):
        return int(tf.shape(tf.nest.flatten(batch)[0])[0])
    return 0
