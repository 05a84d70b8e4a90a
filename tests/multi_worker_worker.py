"""One process of tests/test_multi_worker.py: trains a tiny classifier and a tiny Distiller.

    python tests/multi_worker_worker.py single|worker DATA_DIR RUN_DIR RESULT_JSON [PARTS]

``single``: one process, no strategy. ``worker``: one worker of a MultiWorkerMirroredStrategy
cluster described by the TF_CONFIG environment variable. PARTS is a comma list among
``classifier`` and ``distiller`` (default both). Both modes train the same models on the same
data with the same GLOBAL batch and write the per-step and per-epoch losses to RESULT_JSON.
"""
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from chestkd.training.distribute import (distribution_strategy, is_chief,  # noqa: E402
                                         remove_worker_dir, shard_policy_for, worker_run_dir)

MODE, DATA_DIR, RUN_DIR, RESULT = sys.argv[1:5]
PARTS = sys.argv[5].split(",") if len(sys.argv) > 5 else ["classifier", "distiller"]
CONFIG = {"distribute": "multi_worker" if MODE == "worker" else "none", "epochs": 2,
          "batch_size": 8, "seed": 3, "schedule": "constant"}
# First thing: MultiWorkerMirroredStrategy must exist before TensorFlow runs any operation.
STRATEGY = distribution_strategy(CONFIG["distribute"])

import keras  # noqa: E402

keras.config.disable_traceback_filtering()  # full tracebacks in the test's report
import numpy as np  # noqa: E402

from chestkd.data.dataset import Dataset  # noqa: E402
from chestkd.data.pipeline import make_dataset  # noqa: E402
from chestkd.distill import Distiller, KDLoss  # noqa: E402
from chestkd.training.losses import MaskedAUC, hard_loss_for  # noqa: E402
from chestkd.training.trainer import fit  # noqa: E402

SIZE, C = 8, 3


class StepLosses(keras.callbacks.Callback):
    """Logs of every training step (Keras reports the running mean of the epoch)."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in (logs or {}).items()})


def optimizer():
    # SGD with momentum on a decaying schedule, as chestkd.training.trainer.make_optimizer
    # builds by default; spelled out so that the test does not follow its options.
    return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.3, 4), momentum=0.9)


def compile_classifier(model, data):
    """As chestkd.training.classifier.compile_classifier: masked hard loss, MaskedAUC."""
    model.compile(optimizer=optimizer(), loss=hard_loss_for(data.multi_label),
                  metrics=[MaskedAUC(num_labels=data.num_classes,
                                     softmax=not data.multi_label, name="auc")])
    return model


def tiny_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(C, name="logits")(h), name=f"m{seed}")


def load_data():
    table = json.loads(open(os.path.join(DATA_DIR, "data.json")).read())
    return Dataset("toy", ["a", "b", "c"], True, np.array(table["paths"]),
                   np.array(table["labels"], np.float32),
                   np.array([f"p{i}" for i in range(len(table["paths"]))]),
                   np.array(table["split"]), root=DATA_DIR)


def pipelines(data, teacher=None):
    common = dict(image_size=SIZE, batch_size=CONFIG["batch_size"])  # the GLOBAL batch
    train = make_dataset(data, "train", training=True, seed=CONFIG["seed"],
                         teacher_logits=None if teacher is None else teacher["train"], **common)
    val = make_dataset(data, "val", training=False,
                       teacher_logits=None if teacher is None else teacher["val"], **common)
    return shard_policy_for(train, STRATEGY), shard_policy_for(val, STRATEGY)


def train(name, build, data, teacher=None):
    run_dir = os.path.join(RUN_DIR, name)
    folder = worker_run_dir(run_dir, STRATEGY)  # non-chief workers: a temporary folder
    with STRATEGY.scope():
        model = build()
    student = getattr(model, "student", model)
    initial = [w.tolist() for w in student.get_weights()]
    train_ds, val_ds = pipelines(data, teacher)
    if MODE == "single":
        # Under a strategy, Keras' fit (TensorFlowTrainer._maybe_symbolic_build) first draws
        # one batch from a throw-away iterator of the training data, and chestkd's pipeline
        # reshuffles and redraws its flips at every iteration: so its first epoch sees the
        # order and flips of the dataset's SECOND iteration. Without a strategy, skip one
        # iteration the same way so both runs see the same batches.
        iter(train_ds)
    steps = StepLosses()
    history = fit(model, train_ds, val_ds, CONFIG, folder, verbose=0, extra_callbacks=[steps])
    written = sorted(os.listdir(folder))
    remove_worker_dir(folder, run_dir)
    return {"steps": steps.steps, "history": {k: [float(v) for v in vs]
                                              for k, vs in history.history.items()},
            "folder": str(folder), "written": written, "initial_weights": initial,
            "final_weights": [w.tolist() for w in student.get_weights()]}


def main():
    data = load_data()
    results = {"mode": MODE, "replicas": STRATEGY.num_replicas_in_sync,
               "chief": is_chief(STRATEGY)}
    if "classifier" in PARTS:
        results["classifier"] = train(
            "classifier", lambda: compile_classifier(tiny_model(1), data), data)
    if "distiller" in PARTS:
        teacher = {split: np.load(os.path.join(DATA_DIR, f"teacher_{split}.npy"))
                   for split in ("train", "val")}

        def build():
            distiller = Distiller(tiny_model(2), None, loss=KDLoss("sigmoid", 2.0, 0.5),
                                  multi_label=True, seed=CONFIG["seed"])
            distiller.compile(optimizer=optimizer())
            return distiller

        results["distiller"] = train("distiller", build, data, teacher)
    with open(RESULT, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # never wait for a peer that is gone
    sys.stdout.flush()
    os._exit(0)
