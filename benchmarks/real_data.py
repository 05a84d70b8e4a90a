"""Settings that learn from a few hundred real chest X-rays, against two baselines.

    nice -n 15 python benchmarks/real_data.py DATA [--csv Data_Entry_2017_v2020.csv.gz]
        [--folds 5] [--tune-folds 2] [--settings a,b,...] [--out DIR]
        [--run-folds 2,3,4] [--baselines compute|cached|pixels]

(``--run-folds`` and ``--baselines`` split the work between processes writing into the same
``--out``; a last run with every setting and ``--baselines cached`` writes the tables.)

``DATA`` is a folder of ChestX-ray14 images (``DATA/images/*.png`` or the PNGs directly in
``DATA``) with the metadata CSV (``Image Index``, ``Finding Labels``, ``Patient ID``) in
``DATA`` or its parent, or given with ``--csv``; only the listed images on disk are used.

Protocol
--------
* Images are read once with chestkd's reader (:func:`chestkd.data.images.read_image`: RGB,
  alpha dropped, ``[-1, 1]``) at ``--image-size`` (64: the native size of the downsized set).
* ``--folds`` folds grouped by patient (scikit-learn's ``StratifiedGroupKFold``, stratified on
  "any finding", seeded). Every setting and both baselines are trained once per fold on the
  other folds and predict the held-out fold; their out-of-fold predictions are POOLED over
  folds and scored as one set: one AUC per finding, with a patient-bootstrap 95 % interval
  (:func:`chestkd.evaluation.statistics.bootstrap_auc`, percentile, ``--bootstrap``
  resamples), and a paired patient bootstrap of each setting minus the pixel baseline
  (:func:`chestkd.evaluation.statistics.paired_bootstrap`).
* Findings scored: those with at least ``--min-positives`` positive images in the pooled
  images of the part being scored (and at least one negative).
* Tuning: settings are compared on the first ``--tune-folds`` folds (pooled) and the table
  that reports them is computed on the OTHER folds only, so the setting picked as the profile
  is not reported on the images that picked it. Both tables are written.
* Networks: each run holds out ~15 % of its training patients as a validation split (what a
  recipe's run has) and gives three models from one training: ``best-val`` (the epoch of the
  best exact validation mean AUC: checkpoint selection on a few dozen images), ``last`` (the
  fixed schedule's final weights) and ``swa`` (the mean of the weights of the last third of
  the epochs, BatchNorm re-estimated on the training images).
* Baselines on the same folds: ``pixels-lr``, an L2 logistic regression per finding on
  32x32 grey pixels (standardised; C chosen by inner patient-grouped CV on the training
  folds); ``phantom-probe``, the same logistic regression on the pooled features
  (``features_pool``) of a network pretrained on chestkd's phantom (trained once, cached in
  ``--out``).

Writes ``--out``/``results.json``, ``table_report.md``, ``table_tune.md`` and per-fold
predictions (``fold-K/<setting>.npz``, reused when the script runs again, so an interrupted
benchmark continues).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chestkd.data import CHESTXRAY14_FINDINGS  # noqa: E402
from chestkd.errors import ChestKDError, ConfigError, DataError  # noqa: E402
from chestkd.evaluation.statistics import bootstrap_auc, paired_bootstrap  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Network settings: every key is a run-configuration key of chestkd (config.py), plus
# ``init`` (scratch | phantom | phantom-frozen) and ``class_weight`` (positive weight per
# finding, neg/pos clipped to [1, 10]).
COMMON = {"image_size": 64, "batch_size": 32, "optimizer": "adam", "schedule": "cosine",
          "weight_decay_mode": "decoupled", "augment": "light", "init": "scratch",
          "class_weight": False}
SETTINGS = {
    "conv3-adam1e-3": {**COMMON, "model": "conv3_student", "learning_rate": 1e-3,
                       "weight_decay": 1e-4, "epochs": 20},
    "conv3-adam3e-4-wd": {**COMMON, "model": "conv3_student", "learning_rate": 3e-4,
                          "weight_decay": 1e-2, "epochs": 20},
    "conv3-classweight": {**COMMON, "model": "conv3_student", "learning_rate": 3e-4,
                          "weight_decay": 1e-2, "epochs": 20, "class_weight": True},
    "baseline_cnn": {**COMMON, "model": "baseline_cnn", "learning_rate": 3e-4,
                     "weight_decay": 1e-2, "epochs": 20},
    "conv3-phantom-ft": {**COMMON, "model": "conv3_student", "learning_rate": 3e-4,
                         "weight_decay": 1e-2, "epochs": 20, "init": "phantom"},
    # the same at 32 px: 4x less compute, for a machine shared by many jobs
    "conv3-32px": {**COMMON, "model": "conv3_student", "image_size": 32, "learning_rate": 3e-4,
                   "weight_decay": 1e-2, "epochs": 10},
    "conv3-32px-classweight": {**COMMON, "model": "conv3_student", "image_size": 32,
                               "learning_rate": 3e-4, "weight_decay": 1e-2, "epochs": 10,
                               "class_weight": True},
    "conv3-32px-adam1e-3": {**COMMON, "model": "conv3_student", "image_size": 32,
                            "learning_rate": 1e-3, "weight_decay": 1e-4, "epochs": 10},
    # the small-real profile at the set's native 64 px (is the downsampling to 32 px a loss?)
    "conv3-64px-adam1e-3": {**COMMON, "model": "conv3_student", "image_size": 64,
                            "learning_rate": 1e-3, "weight_decay": 1e-4, "epochs": 10},
    "conv3-32px-phantom-ft": {**COMMON, "model": "conv3_student", "image_size": 32,
                              "learning_rate": 3e-4, "weight_decay": 1e-2, "epochs": 10,
                              "init": "phantom"},
    "resnet32-adam3e-4": {**COMMON, "model": "resnet32", "learning_rate": 3e-4,
                          "weight_decay": 1e-2, "epochs": 20},
}
DEFAULT_SETTINGS = ("conv3-adam1e-3", "conv3-adam3e-4-wd", "conv3-phantom-ft")
SELECTIONS = ("best-val", "last", "swa")
BASELINES = ("pixels-lr", "phantom-probe")
PROBE_MODEL = "conv3_student"


# ----------------------------------------------------------------------------- data


def find_csv(data_dir: Path, csv) -> Path:
    if csv is not None:
        path = Path(csv)
        if not path.is_file():
            raise ConfigError(f"--csv {path}: file not found")
        return path
    for folder in (data_dir, data_dir.parent):
        found = sorted(folder.glob("Data_Entry_2017*.csv*"))
        if found:
            return found[0]
    raise ConfigError(f"{data_dir}: no Data_Entry_2017*.csv(.gz) in the folder or its parent; "
                      f"pass --csv")


def load_images(data_dir, csv=None, image_size: int = 64, findings=CHESTXRAY14_FINDINGS):
    """(images (N, S, S, 3) in [-1, 1], labels (N, C) 0/1, patients (N,), names (N,)) of the
    metadata rows whose image is on disk, in the CSV's order."""
    from chestkd.data.images import read_image
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"DATA {data_dir}: no such folder")
    image_dir = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    on_disk = {p.name: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    csv_path = find_csv(data_dir, csv)
    table = pd.read_csv(csv_path, dtype=str)
    missing = [c for c in ("Image Index", "Finding Labels", "Patient ID") if c not in table]
    if missing:
        raise DataError(f"{csv_path}: no column(s) {missing}")
    table = table[table["Image Index"].isin(on_disk)].reset_index(drop=True)
    if len(table) < 20:
        raise DataError(f"{image_dir}: {len(table)} of the images listed in {csv_path} are on "
                        f"disk; the benchmark needs at least 20")
    labels = np.zeros((len(table), len(findings)), np.float32)
    for row, text in enumerate(table["Finding Labels"].fillna("")):
        for name in text.split("|"):
            if name in findings:
                labels[row, findings.index(name)] = 1.0
    images = np.stack([read_image(on_disk[name], image_size)
                       for name in table["Image Index"]]).astype(np.float32)
    return images, labels, table["Patient ID"].to_numpy(str), table["Image Index"].to_numpy(str)


def patient_folds(labels, patients, folds: int, seed: int) -> np.ndarray:
    """Fold index of each image: folds grouped by patient, stratified on any finding."""
    from sklearn.model_selection import StratifiedGroupKFold
    if len(np.unique(patients)) < folds:
        raise DataError(f"{len(np.unique(patients))} patients cannot fill {folds} folds")
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(labels), -1)
    for k, (_, test) in enumerate(split.split(labels, labels.max(1) > 0, groups=patients)):
        fold[test] = k
    return fold


def resized(images, size: int) -> np.ndarray:
    """``images`` at ``size`` px (chestkd's shrinking rule, INTER_AREA), or as they are."""
    import cv2
    if images.shape[1] == size:
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
                     for im in images]).astype(np.float32)


def inner_split(patients, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a validation split holding ~``fraction`` of the patients."""
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    count = max(1, int(round(fraction * len(unique))))
    chosen = set(rng.choice(unique, count, replace=False))
    return np.array([p in chosen for p in patients])


# ----------------------------------------------------------------------------- baselines


def grey_pixels(images, size: int = 32) -> np.ndarray:
    import cv2
    return np.stack([cv2.resize(im.mean(-1), (size, size), interpolation=cv2.INTER_AREA)
                     .ravel() for im in images])


def logistic_scores(x_train, y_train, x_test, groups, seed: int, fitted=None) -> np.ndarray:
    """Per-finding L2 logistic regression on standardised features, C chosen per finding by
    3-fold patient-grouped CV on the training images (log-loss); (N_test, C) scores. Only
    the findings in ``fitted`` (a boolean mask; None: all) get a model, the others score 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(x_train)
    a, b = scaler.transform(x_train), scaler.transform(x_test)
    scores = np.zeros((len(b), y_train.shape[1]))
    grid = (1e-4, 1e-3, 1e-2, 1e-1)
    for c in range(y_train.shape[1]):
        y = y_train[:, c]
        if fitted is not None and not fitted[c]:
            continue
        if y.min() == y.max() or min(y.sum(), len(y) - y.sum()) < 3:
            continue  # no model: a constant score (AUC 0.5) for a finding never seen
        best, best_c = -np.inf, grid[0]
        for value in grid:
            model = LogisticRegression(C=value, max_iter=2000)
            fit = cross_val_score(model, a, y, groups=groups, cv=GroupKFold(3),
                                  scoring="neg_log_loss")
            if fit.mean() > best:
                best, best_c = fit.mean(), value
        scores[:, c] = LogisticRegression(C=best_c, max_iter=2000).fit(a, y) \
            .decision_function(b)
    return scores


def pretrained_phantom_model(out: Path, image_size: int, images: int, epochs: int, seed: int):
    """The probe's network (``PROBE_MODEL``) trained on chestkd's 14-finding phantom at the
    benchmark's image size (Adam 1e-3 cosine, flip), cached as ``out/phantom-<...>.keras``."""
    import keras
    from chestkd import models
    from chestkd.data import load_dataset
    from chestkd.data.pipeline import make_dataset
    from chestkd.training.losses import hard_loss_for
    from chestkd.training.run import seed_everything
    from chestkd.training.trainer import make_optimizer
    path = out / f"phantom-{PROBE_MODEL}-{image_size}px-{images}-{epochs}ep-s{seed}.keras"
    if path.exists():
        return keras.models.load_model(path, compile=False), path
    print(f"pretraining {PROBE_MODEL} on the phantom ({images} films, {image_size} px, "
          f"{epochs} epochs) -> {path}", flush=True)
    data = load_dataset("phantom", None, images=images, size=image_size, seed=seed,
                        label_noise=0.1)
    seed_everything(seed)
    model = models.build(PROBE_MODEL, data.num_classes, (image_size, image_size, 3))
    config = {"learning_rate": 1e-3, "schedule": "cosine", "epochs": epochs,
              "optimizer": "adam", "weight_decay": 1e-4, "weight_decay_mode": "decoupled"}
    train = make_dataset(data, "train", training=True, seed=seed, batch_size=32,
                         image_size=image_size, augment="flip")
    steps = int(np.ceil(int((data.split == "train").sum()) / 32))
    model.compile(optimizer=make_optimizer(config, steps), loss=hard_loss_for(True))
    model.fit(train, epochs=epochs, verbose=2)
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, path


def pooled_features(model, images) -> np.ndarray:
    import keras
    extractor = keras.Model(model.inputs, model.get_layer("features_pool").output)
    return np.asarray(extractor.predict(images, batch_size=64, verbose=0), np.float64)


# ----------------------------------------------------------------------------- networks


def weighted_bce(pos_weight):
    """Mean over findings of ``w_c y log s(z) + (1 - y) log(1 - s(z))`` (stable form);
    ``pos_weight`` None: the plain masked BCE of chestkd."""
    from keras import ops
    from chestkd.training.losses import masked_binary_crossentropy, sigmoid_cross_entropy
    if pos_weight is None:
        return masked_binary_crossentropy
    weights = ops.convert_to_tensor(np.asarray(pos_weight, np.float32))

    def loss(y_true, logits):
        y = ops.cast(y_true, "float32")
        positive = y * weights * sigmoid_cross_entropy(ops.ones_like(y), logits)
        negative = (1.0 - y) * sigmoid_cross_entropy(ops.zeros_like(y), logits)
        return ops.mean(positive + negative, axis=-1)
    return loss


def train_dataset(images, labels, setting: dict, seed: int):
    """Shuffled, augmented batches from arrays, with chestkd's augmentation."""
    import tensorflow as tf
    from chestkd.data.augment import RANGES, augment_batch, draw_parameters
    batch = int(setting["batch_size"])
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch)
    kind = setting["augment"]
    generator = tf.random.Generator.from_seed(seed)

    def augment(x, y):
        flips = generator.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
        x = tf.where(flips, x[:, :, ::-1, :], x)
        if kind in RANGES:
            keys = generator.uniform_full_int([], tf.int64)
            params = tf.map_fn(lambda i: draw_parameters(keys, i, RANGES[kind]),
                               tf.range(tf.shape(x)[0], dtype=tf.int64),
                               fn_output_signature=tf.float32)
            x = augment_batch((x + 1.0) / 2.0, params) * 2.0 - 1.0
        return x, y
    return ds.map(augment).prefetch(2)


def init_model(setting: dict, num_classes: int, phantom_path: Path | None):
    import keras
    from chestkd import models
    from chestkd.models.weights import transfer_weights
    size = int(setting["image_size"])
    model = models.build(setting["model"], num_classes, (size, size, 3))
    if setting["init"].startswith("phantom"):
        source = keras.models.load_model(phantom_path, compile=False)
        transfer_weights(source, model, source_label=str(phantom_path))
    return model


def run_network(setting: dict, images, labels, patients, test_images, seed: int,
                phantom_path: Path | None) -> dict:
    """One training; test scores of the best-val, last and swa models, and the curve."""
    import tensorflow as tf
    from chestkd.evaluation.statistics import exact_auc, mean_over_classes
    from chestkd.training.callbacks import reestimate_batch_norm
    from chestkd.training.run import seed_everything
    from chestkd.training.trainer import make_optimizer
    val = inner_split(patients, 0.15, seed)
    x_train, y_train, x_val, y_val = images[~val], labels[~val], images[val], labels[val]
    seed_everything(seed)
    model = init_model(setting, labels.shape[1], phantom_path)
    pos = y_train.sum(0)
    pos_weight = (np.clip((len(y_train) - pos) / np.maximum(pos, 1), 1.0, 10.0)
                  if setting["class_weight"] else None)
    epochs = int(setting["epochs"])
    steps = int(np.ceil(len(x_train) / int(setting["batch_size"])))
    model.compile(optimizer=make_optimizer(setting, steps), loss=weighted_bce(pos_weight))
    data = train_dataset(x_train, y_train, setting, seed)
    swa_from = epochs - max(1, epochs // 3)  # average the last third of the epochs
    curve, best = [], (-np.inf, None, 0)
    average, averaged = None, 0
    for epoch in range(epochs):
        model.fit(data, epochs=1, verbose=0)
        val_scores = model.predict(x_val, batch_size=128, verbose=0)
        valid = (y_val.sum(0) > 0) & (y_val.sum(0) < len(y_val))
        val_auc = float(mean_over_classes(exact_auc(y_val[:, valid], val_scores[:, valid])))
        curve.append(val_auc)
        if val_auc > best[0]:
            best = (val_auc, model.predict(test_images, batch_size=128, verbose=0), epoch + 1)
        if epoch >= swa_from:
            weights = [np.asarray(w, np.float64) for w in model.get_weights()]
            average = weights if average is None else [
                (averaged * a + w) / (averaged + 1) for a, w in zip(average, weights)]
            averaged += 1
    last = model.predict(test_images, batch_size=128, verbose=0)
    model.set_weights([a.astype(np.float32) for a in average])
    reestimate_batch_norm(model, tf.data.Dataset.from_tensor_slices(
        (x_train, y_train)).batch(64))
    swa = model.predict(test_images, batch_size=128, verbose=0)
    return {"best-val": best[1], "last": last, "swa": swa, "best_epoch": best[2],
            "val_curve": curve}


# ----------------------------------------------------------------------------- scoring


def scored_findings(labels, min_positives: int) -> np.ndarray:
    positives = labels.sum(0)
    return (positives >= min_positives) & (positives < len(labels))


def score_table(labels, patients, predictions: dict, findings, n_boot: int, seed: int,
                reference: str = "pixels-lr") -> pd.DataFrame:
    """One row per model: pooled mean AUC over ``findings`` with its patient-bootstrap CI,
    and the paired bootstrap difference to ``reference``."""
    y = labels[:, findings]
    rows = []
    for name, scores in predictions.items():
        s = scores[:, findings]
        result = bootstrap_auc(y, s, patients, n_boot=n_boot, seed=seed)
        row = {"setting": name, "mean_auc": result["mean_auc"],
               "ci_low": result["mean_ci"][0], "ci_high": result["mean_ci"][1]}
        if name != reference and reference in predictions:
            # difference = b - a: this setting minus the reference
            paired = paired_bootstrap(y, predictions[reference][:, findings], s, patients,
                                      n_boot=n_boot, seed=seed)
            row.update(diff=paired["difference"], diff_low=paired["difference_ci"][0],
                       diff_high=paired["difference_ci"][1], p_value=paired["p_value"])
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| setting | mean AUC [95 % CI] | half-width | minus pixels-lr [95 % CI] | p |",
             "|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        diff = ("" if pd.isna(r.get("diff", np.nan)) else
                f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]")
        p = "" if pd.isna(r.get("p_value", np.nan)) else f"{r['p_value']:.3f}"
        lines.append(f"| {r['setting']} | {r['mean_auc']:.3f} [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}] | {(r['ci_high'] - r['ci_low']) / 2:.3f} | {diff} | "
                     f"{p} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder of the images (or with images/ inside)")
    parser.add_argument("--csv", help="metadata CSV (default: Data_Entry_2017*.csv* in DATA "
                                      "or its parent)")
    parser.add_argument("--out", default="benchmarks/real_data_out")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tune-folds", type=int, default=2,
                        help="the first K folds choose settings; the others report them")
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                        help=f"comma-separated, from {', '.join(SETTINGS)} (or none)")
    parser.add_argument("--epochs", type=int, default=None, help="override every setting's")
    parser.add_argument("--run-folds", default=None,
                        help="train networks on these folds only, e.g. 2,3,4 (others: their "
                             "saved predictions if any); to split the work between processes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--min-positives", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantom-images", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--baselines", choices=("compute", "cached", "pixels"),
                        default="compute",
                        help="cached: use the baselines' saved predictions only (another "
                             "process of the same benchmark computes them); pixels: compute "
                             "the pixel baseline only")
    args = parser.parse_args(argv)
    names = [s for s in args.settings.split(",") if s and s != "none"]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}")
    if not 0 <= args.tune_folds < args.folds:
        raise ConfigError(f"--tune-folds {args.tune_folds}: between 0 and --folds - 1")
    args.settings = names
    return args


def run(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, patients, names = load_images(args.data, args.csv, args.image_size)
    fold = patient_folds(labels, patients, args.folds, args.seed)
    print(f"{len(images)} images of {len(np.unique(patients))} patients, {args.folds} "
          f"patient-grouped folds", flush=True)
    # a setting keeps its own input size when it differs from COMMON's (64 px)
    settings = {name: {**SETTINGS[name],
                       "image_size": (SETTINGS[name]["image_size"]
                                      if SETTINGS[name]["image_size"] != COMMON["image_size"]
                                      else args.image_size),
                       **({"epochs": args.epochs} if args.epochs else {})}
                for name in args.settings}
    phantom_path, features = None, None
    if args.baselines == "compute" or any(s["init"] != "scratch" for s in settings.values()):
        phantom, phantom_path = pretrained_phantom_model(
            out, args.image_size, args.phantom_images, args.pretrain_epochs, args.seed)
        features = pooled_features(phantom, images)
    pixels = grey_pixels(images)
    pooled, done, timing = {}, {}, {}
    run_folds = (set(range(args.folds)) if args.run_folds is None
                 else {int(v) for v in str(args.run_folds).split(",") if v.strip()})
    # Only findings that can be scored in some part get a logistic model (the others are
    # never in a table).
    fitted = scored_findings(labels, args.min_positives)
    for k in range(args.folds):
        test, train = fold == k, fold != k
        folder = out / f"fold-{k}"
        folder.mkdir(exist_ok=True)

        def cached(name, compute):
            path = folder / f"{name}.npz"
            if path.exists():
                with np.load(path) as npz:
                    return {key: npz[key] for key in npz.files}
            start = time.perf_counter()
            result = compute()
            result["seconds"] = np.float64(time.perf_counter() - start)
            np.savez(path, **{key: np.asarray(v) for key, v in result.items()})
            return result

        inputs = {"pixels-lr": pixels, "phantom-probe": features}
        for name in BASELINES:
            if (args.baselines == "cached" or k not in run_folds
                    or (args.baselines == "pixels" and name != "pixels-lr")) \
                    and not (folder / f"{name}.npz").exists():
                continue
            result = cached(name, lambda: {"scores": logistic_scores(
                inputs[name][train], labels[train], inputs[name][test], patients[train],
                args.seed, fitted=fitted)})
            pooled.setdefault(name, np.zeros_like(labels))[test] = result["scores"]
            done.setdefault(name, set()).add(k)
        for name, setting in settings.items():
            if k not in run_folds and not (folder / f"{name}.npz").exists():
                continue
            inputs_of = resized(images, int(setting["image_size"]))
            result = cached(name, lambda: run_network(
                setting, inputs_of[train], labels[train], patients[train], inputs_of[test],
                args.seed + k, phantom_path))
            timing.setdefault(name, []).append(float(result["seconds"]))
            for selection in SELECTIONS:
                pooled.setdefault(f"{name} [{selection}]", np.zeros_like(labels))[test] = \
                    result[selection]
                done.setdefault(f"{name} [{selection}]", set()).add(k)
            print(f"fold {k}: {name} trained in {float(result['seconds']):.0f} s "
                  f"(best-val epoch {int(result['best_epoch'])})", flush=True)
    # Ensemble of the networks' swa models: the mean of their per-fold ranks would need
    # calibration; their logits are averaged, as an ensemble of the same loss.
    swa = [f"{name} [swa]" for name in settings if f"{name} [swa]" in pooled]
    if len(swa) > 1:
        pooled["ensemble [swa, all settings]"] = np.mean([pooled[n] for n in swa], axis=0)
        done["ensemble [swa, all settings]"] = set.intersection(*(done[n] for n in swa))
    parts = {"tune": range(args.tune_folds), "report": range(args.tune_folds, args.folds)}
    tables = {}
    for part, part_folds in parts.items():
        # A model that has not finished every fold of the part is left out of its table.
        names = [n for n in pooled if set(part_folds) <= done[n]]
        rows = np.isin(fold, list(part_folds))
        if not rows.any() or not names:
            continue
        findings = scored_findings(labels[rows], args.min_positives)
        frame = score_table(labels[rows], patients[rows],
                            {n: pooled[n][rows] for n in names}, findings,
                            args.bootstrap, args.seed)
        tables[part] = {"findings": [CHESTXRAY14_FINDINGS[i] for i in np.flatnonzero(findings)],
                        "images": int(rows.sum()), "patients": int(len(np.unique(patients[rows]))),
                        "rows": frame.to_dict("records")}
        selection_rows = []
        for name in settings:
            reference = f"{name} [best-val]"
            if reference not in names:
                continue
            for rule in ("last", "swa"):
                other = f"{name} [{rule}]"
                paired = paired_bootstrap(labels[rows][:, findings],
                                          pooled[reference][rows][:, findings],
                                          pooled[other][rows][:, findings], patients[rows],
                                          n_boot=args.bootstrap, seed=args.seed)
                selection_rows.append(
                    f"| {name} | {rule} minus best-val | {paired['difference']:+.3f} "
                    f"[{paired['difference_ci'][0]:+.3f}, {paired['difference_ci'][1]:+.3f}] "
                    f"| {paired['p_value']:.3f} |")
        selection = ("\n\nModel selection, same training runs (paired patient bootstrap):\n\n"
                     "| setting | comparison | difference in mean AUC [95 % CI] | p |\n"
                     "|---|---|---|---|\n"
                     + "\n".join(selection_rows)) if selection_rows else ""
        header = (f"{part} part: folds {sorted(set(fold[rows].tolist()))}, {int(rows.sum())} "
                  f"images, {tables[part]['patients']} patients; mean AUC over "
                  f"{int(findings.sum())} findings with >= {args.min_positives} positives: "
                  f"{', '.join(tables[part]['findings'])}")
        text = header + "\n\n" + markdown(frame) + selection + "\n"
        (out / f"table_{part}.md").write_text(text)
        print("\n" + text, flush=True)
    summary = {"args": {k: v for k, v in vars(args).items()}, "tables": tables,
               "seconds_per_fold": timing, "settings": settings}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def main(argv=None) -> int:
    try:
        run(argv)
    except ChestKDError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
