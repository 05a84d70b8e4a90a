"""FGSM and PGD against independent references, and the robustness command."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.robustness import fgsm, pgd
from chestkd.robustness.attacks import attack_loss
from chestkd.robustness.tables import robustness_table


def tiny_model(classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(classes)(h))


def batch(n=20, classes=3, seed=0, multi_label=True):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 6, 6, 3)).astype(np.float32)
    x[0, 0, 0] = 1.0     # on the boundary: clipping must bite
    if multi_label:
        y = (rng.uniform(size=(n, classes)) < 0.4).astype(np.float32)
        y[:4, 0] = -1.0
    else:
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return x, y


def reference_loss(model, x, y, multi_label):
    """Per-image loss in float64 NumPy from the model's logits (not the package's loss)."""
    z = np.asarray(model(x, training=False), np.float64)
    if multi_label:
        known = y >= 0
        t = np.where(known, y, 0)
        bce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return (bce * known).sum(1) / np.maximum(known.sum(1), 1)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    return -(y * log_p).sum(1)


@pytest.mark.parametrize("multi_label", [True, False])
def test_fgsm_is_the_clipped_signed_gradient_step(multi_label):
    model = tiny_model()
    x, y = batch(multi_label=multi_label)
    epsilon = 8 / 255
    adversarial = fgsm(model, x, y, epsilon, multi_label=multi_label, batch_size=7)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = model(xt, training=False)
        if multi_label:
            known = tf.cast(y >= 0, tf.float32)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=np.where(y >= 0, y, 0), logits=z)
            loss = tf.reduce_sum(tf.reduce_sum(bce * known, 1) / tf.reduce_sum(known, 1))
        else:
            loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z))
    expected = np.clip(x + 2 * epsilon * np.sign(tape.gradient(loss, xt).numpy()), -1, 1)
    np.testing.assert_allclose(adversarial, expected, atol=1e-6)
    assert np.abs(adversarial - x).max() == pytest.approx(2 * epsilon, rel=1e-5)
    assert adversarial.max() <= 1.0 and adversarial.min() >= -1.0
    # the loss the attack ascends is the reference loss, and it went up
    np.testing.assert_allclose(np.asarray(attack_loss(y, model(x), multi_label)),
                               reference_loss(model, x, y, multi_label), rtol=1e-5, atol=1e-6)
    assert (reference_loss(model, adversarial, y, multi_label).mean()
            > reference_loss(model, x, y, multi_label).mean())


def test_unknown_labels_do_not_move_the_attack():
    model = tiny_model()
    x, y = batch(multi_label=True)
    y[5] = -1.0                                # nothing known about image 5
    adversarial = fgsm(model, x, y, 0.05)
    np.testing.assert_array_equal(adversarial[5], x[5])
    changed = y.copy()
    changed[:4, 0] = 1.0                       # an unknown label made known changes the step
    assert not np.array_equal(fgsm(model, x, changed, 0.05)[:4], adversarial[:4])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_valid_range(norm):
    model = tiny_model()
    x, y = batch()
    epsilon = 0.03
    adversarial = pgd(model, x, y, epsilon, steps=5, norm=norm, seed=1, batch_size=8)
    delta = (adversarial - x).reshape(len(x), -1).astype(np.float64)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert size.max() <= 2 * epsilon * (1 + 1e-5)
    assert adversarial.max() <= 1.0 and adversarial.min() >= -1.0
    assert size.max() > 0.5 * 2 * epsilon       # it moved
    np.testing.assert_array_equal(adversarial, pgd(model, x, y, epsilon, steps=5, norm=norm,
                                                   seed=1, batch_size=8))


def test_pgd_loss_is_never_below_fgsm_on_the_same_inputs():
    model = tiny_model(seed=2)
    x, y = batch(seed=2)
    epsilon = 0.05
    one_step = fgsm(model, x, y, epsilon)
    many = pgd(model, x, y, epsilon, steps=6, step_size=epsilon, random_start=False)
    loss_fgsm = reference_loss(model, one_step, y, True)
    loss_pgd = reference_loss(model, many, y, True)
    assert np.all(loss_pgd >= loss_fgsm - 1e-6)
    assert loss_pgd.mean() > loss_fgsm.mean()
    started = pgd(model, x, y, epsilon, steps=6, random_start=True)
    assert reference_loss(model, started, y, True).mean() >= loss_fgsm.mean() - 1e-6


@pytest.mark.parametrize("multi_label", [True, False])
def test_a_mixed_precision_model_is_attacked_in_its_float32_twin_s_direction(multi_label):
    # Regression: its gradients flowed back in float16, where a confident model's underflow
    # to 0: sign(0) moved no pixel, and its robustness read as perfect.
    def confident(policy):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            inputs = keras.Input((6, 6, 3))
            h = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
            h = keras.layers.GlobalAveragePooling2D()(h)
            return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
        finally:
            keras.mixed_precision.set_global_policy("float32")

    full, mixed = confident("float32"), confident("mixed_float16")
    kernel, bias = full.get_layer("logits").get_weights()
    for model in (full, mixed):                        # logit margins of tens
        model.get_layer("logits").set_weights([kernel * 300, bias])
    x, _ = batch(multi_label=multi_label)
    logits = np.asarray(full(x))
    y = (logits > 0 if multi_label else np.eye(3)[logits.argmax(1)]).astype(np.float32)
    moved = {}
    for name, model in (("float32", full), ("mixed", mixed)):
        moved[name] = fgsm(model, x, y, 0.01, multi_label=multi_label) - x
    assert np.count_nonzero(moved["float32"]) > 0.9 * x.size
    assert abs(np.count_nonzero(moved["mixed"]) - np.count_nonzero(moved["float32"])) \
        < 0.01 * x.size                                # float16 rounding at the clip edges
    assert np.mean(np.sign(moved["mixed"]) == np.sign(moved["float32"])) > 0.95


def test_bad_attack_options_are_config_errors():
    model = tiny_model()
    x, y = batch()
    with pytest.raises(ConfigError, match="norm"):
        pgd(model, x, y, 0.01, norm="l1")
    with pytest.raises(ConfigError, match="epsilon"):
        fgsm(model, x, y, -1.0)


def test_robustness_table_reports_scores_before_and_after_each_attack():
    model = tiny_model(classes=3)
    x, y = batch(n=30, multi_label=False)
    table = robustness_table(model, x, y, ["a", "b", "c"], multi_label=False, epsilon=0.1,
                             norm="linf", steps=3, normalization="minus_one_one")
    assert list(table["attack"]) == ["fgsm", "pgd"]
    assert table["before_f1"].nunique() == 1
    assert np.all(table["mean_auc_drop"] > 0)    # the attack hurts ranking on this model
    for key in ("precision", "recall", "f1", "mean_auc"):
        np.testing.assert_allclose(table[f"{key}_drop"],
                                   table[f"before_{key}"] - table[f"after_{key}"])


# ------------------------------------------------------------ the run's normalisation (defect 2)
NORMALISATIONS = [("minus_one_one", None), ("zero_one", None), ("imagenet", None),
                  ("mean_std", (0.3, 0.2))]


def intensities(n=12, seed=4):
    """Images in intensity units [0, 1]: image 0 holds pixels at 0 and 1 (the clip must bite
    there), the others lie inside (0.1, 0.9), so no clipping shortens their perturbation."""
    rng = np.random.default_rng(seed)
    unit = rng.uniform(0.1, 0.9, (n, 6, 6, 3)).astype(np.float32)
    unit[0, 0, :2] = 1.0
    unit[0, 1, :2] = 0.0
    return unit


def normalised(unit, normalization, mean_std):
    from chestkd.data.pipeline import normalize     # the pipeline's own rule
    return np.asarray(normalize(tf.constant(unit), normalization, mean_std), np.float32)


def per_channel_std(normalization, mean_std):
    """Model-input units per intensity unit, from the normalisation's definition."""
    from chestkd.data.images import IMAGENET_STD
    std = {"minus_one_one": 0.5, "zero_one": 1.0, "imagenet": IMAGENET_STD,
           "mean_std": None if mean_std is None else mean_std[1]}[normalization]
    return np.broadcast_to(np.asarray(std, np.float64), (3,))


@pytest.mark.parametrize("normalization,mean_std", NORMALISATIONS)
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_perturb_by_epsilon_in_intensity_units_for_every_normalisation(
        normalization, mean_std, attack, norm):
    model = tiny_model(seed=1)
    unit = intensities()
    x = normalised(unit, normalization, mean_std)
    _, y = batch(n=len(x))
    options = dict(multi_label=True, norm=norm, normalization=normalization, mean_std=mean_std)

    def run(epsilon):
        if attack == "fgsm":
            return fgsm(model, x, y, epsilon, **options)
        return pgd(model, x, y, epsilon, steps=4, seed=3, **options)

    # epsilon = 0: the clean images, bit for bit (no clean pixel is clipped)
    np.testing.assert_array_equal(run(0.0), x)
    epsilon = 0.03
    adversarial = run(epsilon)
    # back to intensity units with the normalisation's own std (float64)
    delta = (adversarial.astype(np.float64) - x) * per_channel_std(normalization, mean_std)
    adversarial_unit = unit + delta
    assert adversarial_unit.min() >= -1e-6 and adversarial_unit.max() <= 1 + 1e-6
    flat = delta.reshape(len(x), -1)
    size = np.abs(flat).max(1) if norm == "linf" else np.sqrt((flat ** 2).sum(1))
    assert size.max() <= epsilon * (1 + 1e-5)
    if attack == "fgsm":
        # images 1.. are never clipped: each moves by exactly epsilon
        np.testing.assert_allclose(size[1:], epsilon, rtol=1e-4)
        if norm == "linf":
            np.testing.assert_allclose(np.abs(flat[1:]), epsilon, rtol=1e-4)
    else:
        assert size.max() > 0.5 * epsilon            # it moved
    # image 0's pixels at 0 and 1 stay in range (the clip bites in intensity units)
    assert adversarial_unit[0, 0, :2].max() <= 1 + 1e-6
    assert adversarial_unit[0, 1, :2].min() >= -1e-6


def test_fgsm_under_zero_one_is_the_reference_step_of_epsilon():
    """zero_one: one intensity unit is one input unit, so FGSM moves by epsilon, not 2 epsilon."""
    model = tiny_model(seed=1)
    unit = intensities()
    _, y = batch(n=len(unit))
    xt = tf.constant(unit)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(attack_loss(y, model(xt, training=False), True))
    expected = np.clip(unit + 0.02 * np.sign(tape.gradient(loss, xt).numpy()), 0, 1)
    adversarial = fgsm(model, unit, y, 0.02, normalization="zero_one")
    np.testing.assert_allclose(adversarial, expected, atol=1e-6)


def test_unknown_normalisation_is_a_config_error():
    model = tiny_model()
    x, y = batch()
    with pytest.raises(ConfigError, match="normalization"):
        fgsm(model, x, y, 0.01, normalization="zscore")
    with pytest.raises(ConfigError, match="mean_std"):
        pgd(model, x, y, 0.01, normalization="mean_std")


# ---------------------------------------------------- the command on a run (defects 2 and 6)
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder as evaluation leaves it (config.yaml, model.keras, model_info.json with
    validation thresholds) around an untrained model: the command needs no training."""
    from chestkd.training.config import BASE_DEFAULTS, resolve_config, save_config
    from chestkd.training.classifier import image_options, load_run_data
    run_dir = tmp_path_factory.mktemp("run")
    config = resolve_config(["--dataset", "phantom", "--image-size", "32", "phantom_size=32",
                             "phantom_images=120", "--normalization", "imagenet"],
                            BASE_DEFAULTS)
    save_config({**config, "run_dir": str(run_dir)}, run_dir / "config.yaml")
    data = load_run_data(config, run_dir)
    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 5, strides=4, activation="tanh")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(data.num_classes)(h))
    model.save(run_dir / "model.keras")
    # thresholds far from 0.5, so decisions at 0.5 would differ
    values = list(np.linspace(0.2, 0.8, data.num_classes))
    import json
    (run_dir / "model_info.json").write_text(json.dumps({"thresholds": {
        "rule": "youden", "class_names": list(data.class_names), "values": values}}))
    return run_dir, model, data, image_options(data, config), values


def test_the_command_scores_at_the_runs_thresholds_and_its_normalisation(saved_run, tmp_path):
    from chestkd.evaluation.classification import classification_report, report_summary
    from chestkd.robustness.__main__ import run as robustness_run
    from chestkd.robustness.tables import split_arrays
    run_dir, model, data, options, values = saved_run
    result = robustness_run([str(run_dir), "--epsilon", "0", "--steps", "1",
                             "--out", str(tmp_path)])
    assert result["thresholds"] == pytest.approx(values)
    images, labels = split_arrays(data, **options)
    logits = np.asarray(model.predict(images, verbose=0), np.float64)
    report = classification_report(labels, 1 / (1 + np.exp(-logits)), data.class_names,
                                   multi_label=True, thresholds=values)
    expected = report_summary(report, multi_label=True)
    for row in result["rows"]:
        for key in ("precision", "recall", "f1"):
            assert row[f"before_{key}"] == pytest.approx(expected[key], abs=1e-9)
            # epsilon 0 under ImageNet normalisation: nothing clipped, nothing changes
            assert row[f"after_{key}"] == pytest.approx(expected[key], abs=1e-9)
        assert row["mean_auc_drop"] == pytest.approx(0.0, abs=1e-12)
        assert row["normalization"] == "imagenet"


def test_run_thresholds_name_the_file_when_missing_or_mismatched(tmp_path):
    import json
    from chestkd.robustness.tables import run_thresholds
    assert run_thresholds(tmp_path, ["a", "b"], multi_label=False) is None
    with pytest.raises(ConfigError, match="thresholds"):
        run_thresholds(tmp_path, ["a", "b"], multi_label=True)
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"thresholds": {"class_names": ["a", "b"], "values": [0.3, 0.6]}}))
    assert run_thresholds(tmp_path, ["a", "b"], multi_label=True) == [0.3, 0.6]
    with pytest.raises(ConfigError, match="metrics.json"):
        run_thresholds(tmp_path, ["a", "c"], multi_label=True)


def test_a_limited_test_split_is_a_seeded_subset_of_every_class(tmp_path):
    # Regression: --max-images took the split's first images; a folder dataset lists them by
    # class, so 12 of 'lower' made every AUC undefined, reported as 0.0 before and after.
    import cv2
    from chestkd.data.dataset import Dataset
    from chestkd.robustness.tables import scores, split_arrays
    paths = []
    for i in range(40):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], np.full((8, 8), 6 * i, np.uint8))
    labels = np.eye(2, dtype=np.float32)[[0] * 20 + [1] * 20]          # sorted by class
    data = Dataset("folder", ["lower", "upper"], False, np.array(paths), labels,
                   np.array([f"p{i}" for i in range(40)]), np.array(["test"] * 40))
    images, chosen = split_arrays(data, image_size=8, max_images=12)
    assert images.shape == (12, 8, 8, 3) and 0 < chosen[:, 0].sum() < 12
    again_images, again = split_arrays(data, image_size=8, max_images=12)
    np.testing.assert_array_equal(again, chosen)                        # seeded
    everything = split_arrays(data, image_size=8)[1]
    np.testing.assert_array_equal(everything, labels)
    one_class = scores(tiny_model(2), np.zeros((4, 6, 6, 3), np.float32),
                       np.eye(2, dtype=np.float32)[[0, 0, 0, 0]], ["lower", "upper"],
                       multi_label=False)
    assert np.isnan(one_class["mean_auc"])               # not a measured 0.0
