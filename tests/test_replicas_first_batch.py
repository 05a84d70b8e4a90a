"""Several tf.distribute replicas: Keras 3.15 averages the FIRST batch of each fit/evaluate over
the replicas (``_maybe_symbolic_build``), which failed with ``InvalidArgumentError ... AddN``
when that batch did not split evenly (a validation split of 9 images on 2 replicas, after a
whole training epoch). ``chestkd.training.fit`` now splits such a validation split into two
batches (6 + 3) and refuses, before training, a batch size or a split that cannot work.

Two logical CPUs need configuring before TensorFlow starts, hence the subprocess.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from two_cpus import PREAMBLE

REPO = Path(__file__).resolve().parents[1]

SCRIPT = PREAMBLE + textwrap.dedent("""
    import tempfile
    from chestkd.distill import Distiller, KDLoss
    from chestkd.errors import ConfigError
    from chestkd.training.config import BASE_DEFAULTS
    from chestkd.training.losses import MaskedAUC, MaskedBinaryCrossentropy
    from chestkd.training.trainer import fit

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (48, 4, 4, 3)).astype("float32")
    y = (rng.random((48, 3)) < 0.5).astype("float32")
    y[32], y[33] = 1.0, 0.0           # both classes of every finding in the val split
    teacher = rng.normal(size=(48, 3)).astype("float32")

    def model(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4, 4, 3))
        # A convolution: on a CPU, oneDNN fails on a replica given no image (8 + 1 would)
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    def batches(lo, hi, batch, cached=False):
        images = {"image": x[lo:hi], "teacher_logits": teacher[lo:hi]} if cached else x[lo:hi]
        return tf.data.Dataset.from_tensor_slices((images, y[lo:hi])).batch(batch)

    def run(devices, kind, *, batch=16, n_train=32, n_val=9):
        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            if kind == "classifier":
                net = model(1)
                net.compile(keras.optimizers.SGD(0.1), MaskedBinaryCrossentropy(),
                            metrics=[MaskedAUC(num_labels=3, name="auc")])
            else:
                net = Distiller(model(1), None, loss=KDLoss("sigmoid", 2.0, 0.5))
                net.compile(keras.optimizers.SGD(0.1))
        cached = kind == "distiller"
        config = {**BASE_DEFAULTS, "epochs": 2, "schedule": "constant", "batch_size": batch,
                  "checkpoint": "last", "distribute": "mirrored"}
        try:
            history = fit(net, batches(0, n_train, batch, cached),
                          batches(32, 32 + n_val, batch, cached), config, tempfile.mkdtemp(),
                          verbose=0)
        except ConfigError as error:
            return {"ConfigError": str(error)}
        except Exception as error:
            return {"error": type(error).__name__ + ": " + str(error)[:200]}
        return history.history

    results = {}
    for kind in ("classifier", "distiller"):
        results[kind] = {str(len(devices)): run(devices, kind)
                         for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"])}
    two = ["/cpu:0", "/cpu:1"]
    results["odd batch"] = run(two, "classifier", batch=15)
    results["three val images"] = run(two, "classifier", n_val=3)
    results["odd train split"] = run(two, "classifier", n_train=5)
    print("RESULT" + json.dumps(results))
""")


@pytest.fixture(scope="module")
def results():
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("kind", ["classifier", "distiller"])
def test_a_val_split_that_does_not_split_evenly_validates_as_on_one_replica(results, kind):
    # 9 validation images, batch 16: one batch of 9 did not split over 2 replicas (5 vs 4).
    one, two = results[kind]["1"], results[kind]["2"]
    assert "error" not in two and "ConfigError" not in two, two
    assert {"loss", "auc", "val_loss", "val_auc", "val_auc_approx"} <= set(one)
    for key in set(one) - {"epoch_seconds", "learning_rate"}:
        assert len(two[key]) == 2, key
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_a_batch_size_that_does_not_split_is_refused_before_training(results):
    message = results["odd batch"].get("ConfigError", "")
    assert message.startswith("--batch-size 15: with 2 replicas (distribute=mirrored)"), \
        results["odd batch"]
    assert "multiple of 2" in message


def test_a_val_split_of_fewer_than_twice_the_replicas_that_does_not_divide_is_refused(results):
    message = results["three val images"].get("ConfigError", "")
    assert "2 replicas" in message and "first val batch (3 images" in message, \
        results["three val images"]


def test_a_train_split_of_one_uneven_batch_is_refused(results):
    message = results["odd train split"].get("ConfigError", "")
    assert "2 replicas" in message and "first train batch (5 images" in message, \
        results["odd train split"]
