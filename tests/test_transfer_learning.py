"""Transfer learning: weights copied by layer name with the head re-initialised, the frozen
and fine-tuning stages, and the pneumonia paper's recipe end to end on the phantoms."""
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from chestkd.errors import ConfigError
from chestkd.models.weights import source_model_file, transfer_weights
from chestkd.models.zoo import build, freeze_backbone, unfreeze_backbone
from chestkd.experiments import transfer
from chestkd.recipes import transfer_learning

SHAPE = (32, 32, 3)


def _pooled(model, x):
    return keras.Model(model.input, model.get_layer("features_pool").output)(x).numpy()


def test_a_model_of_other_classes_transfers_everything_but_its_head(tmp_path):
    keras.utils.set_random_seed(1)
    source = build("conv3_student", 14, SHAPE)
    keras.utils.set_random_seed(2)
    target = build("conv3_student", 2, SHAPE)
    fresh_head = [w.copy() for w in target.get_layer("logits").get_weights()]
    report = transfer_weights(source, target, source_label="src.keras")
    assert report["copied"] == [l.name for l in target.layers if l.weights and l.name != "logits"]
    assert [item["layer"] for item in report["not_copied"]] == ["logits"]
    x = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype("float32")
    np.testing.assert_array_equal(_pooled(target, x), _pooled(source, x))
    for kept, fresh in zip(target.get_layer("logits").get_weights(), fresh_head):
        np.testing.assert_array_equal(kept, fresh)
    same = build("conv3_student", 14, SHAPE)
    assert transfer_weights(source, same, source_label="s")["not_copied"] == []
    np.testing.assert_array_equal(same(x).numpy(), source(x).numpy())
    # another input size changes a non-head layer: refused, nothing assigned
    small, large = build("baseline_cnn", 2, SHAPE), build("baseline_cnn", 2, (64, 64, 3))
    before = [w.copy() for w in large.get_weights()]
    with pytest.raises(ConfigError, match="fc1"):
        transfer_weights(small, large, source_label="small.keras")
    for now, then in zip(large.get_weights(), before):
        np.testing.assert_array_equal(now, then)
    (tmp_path / "run").mkdir()
    source.save(tmp_path / "run" / "model.keras")
    assert source_model_file(tmp_path / "run") == tmp_path / "run" / "model.keras"
    with pytest.raises(ConfigError, match="model.keras"):
        source_model_file(tmp_path)


def test_frozen_base_and_fine_tuning_keep_batchnorm_in_inference_mode():
    keras.utils.set_random_seed(0)
    model = build("conv3_student", 2, SHAPE)
    x = np.random.default_rng(0).uniform(-1, 1, (8, *SHAPE)).astype("float32")
    y = np.eye(2, dtype="float32")[[0, 1] * 4]

    def step(lr):
        model.compile(optimizer=keras.optimizers.SGD(lr),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        before = {l.name: [w.copy() for w in l.get_weights()] for l in model.layers if l.weights}
        model.train_on_batch(x, y)
        return {name: any(not np.array_equal(a, b) for a, b in
                          zip(model.get_layer(name).get_weights(), weights))
                for name, weights in before.items()}

    freeze_backbone(model)
    assert [l.name for l in model.layers if l.trainable_weights] == ["logits"]
    changed = step(0.1)
    assert changed["logits"] and not any(v for k, v in changed.items() if k != "logits")
    unfreeze_backbone(model)
    changed = step(0.1)
    assert changed["conv1"] and changed["logits"]
    assert not changed["conv1_bn"]  # neither gamma/beta nor the moving statistics move


def test_fine_tuning_by_default_trains_batchnorm_as_pytorch_does():
    """Stage 2's default (``finetune_batchnorm: train``): every layer trains, BatchNorm's
    gamma, beta and moving statistics included; ``frozen`` is the Keras convention."""
    assert transfer_learning.DEFAULTS["finetune_batchnorm"] == "train"
    keras.utils.set_random_seed(0)
    model = freeze_backbone(build("conv3_student", 2, SHAPE))
    transfer.unfrozen(model, "train")
    assert all(layer.trainable for layer in model.layers)
    x = np.random.default_rng(0).uniform(-1, 1, (8, *SHAPE)).astype("float32")
    y = np.eye(2, dtype="float32")[[0, 1] * 4]
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_layer("conv1_bn").get_weights()]
    model.train_on_batch(x, y)
    after = model.get_layer("conv1_bn").get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(after, before))  # gamma, beta, mean, var
    transfer.unfrozen(model, "frozen")
    assert not model.get_layer("conv1_bn").trainable and model.get_layer("conv1").trainable


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """The recipe at 32 px, 1 epoch per stage; ResNet-18 and the teacher are conv3_student,
    initialised from a 14-class model saved in a run folder (``weights: RUN_DIR``: another
    task's model, head replaced). ``weights: phantom`` runs in benchmarks/export.py's recipe."""
    out = tmp_path_factory.mktemp("transfer")
    (out / "source_run").mkdir()
    keras.utils.set_random_seed(7)
    build("conv3_student", 14, SHAPE).save(out / "source_run" / "model.keras")
    result = transfer_learning.run([
        "--out", str(out), "phantom_images=60", "phantom_size=32", "image_size=32",
        "batch_size=16", "epochs=1", "finetune_epochs=1", "transfer_model=conv3_student",
        "teacher_model=conv3_student", f"weights={out / 'source_run'}",
        f"teacher_weights={out / 'source_run'}", "paper_alpha=0.8", "bootstrap=0",
        "latency_images=2", "jit_compile=false", "learning_rate=0.01", "schedule=constant",
        "finetune_batchnorm=frozen", "baseline_epochs=1"])
    run_dir = next(p for p in out.iterdir() if p.name.startswith("transfer_learning-"))
    return run_dir, result


def test_the_recipe_writes_table_4_1_figures_and_a_run_per_setup(recipe_run):
    run_dir, result = recipe_run
    table = pd.read_csv(run_dir / "table4_1.csv")
    assert len(table) == 5 and {"accuracy", "precision", "recall", "f1", "auc", "parameters",
                                "latency_ms"} <= set(table.columns)
    assert "Baseline CNN" in (run_dir / "table4_1.md").read_text()
    for setup, folder in result["setups"].items():
        assert (run_dir / f"confusion_{setup}.png").stat().st_size > 1000
        for name in ("model.keras", "model_card.md", "model_info.json", "metrics.json"):
            assert (Path(folder) / name).exists(), (setup, name)
    # the table's accuracy and recall: the saved test predictions at the positive class's
    # threshold chosen on the validation split; the arg-max accuracy beside them
    with np.load(run_dir / "student" / "test_predictions.npz") as npz:
        truth, logits = npz["labels"].argmax(1), npz["logits"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = p / p.sum(1, keepdims=True)
    threshold = json.loads((run_dir / "student" / "metrics.json").read_text())[
        "thresholds"]["values"][1]
    said = p[:, 1] >= threshold
    row = table.iloc[-1]     # the student, named after the models it was trained with
    assert row["setup"] == "Final student model (conv3_student -> conv3_student KD)"
    assert row["threshold"] == pytest.approx(threshold)
    assert row["accuracy"] == pytest.approx((said == (truth == 1)).mean())
    assert row["recall"] == pytest.approx(said[truth == 1].mean())
    assert row["accuracy_argmax"] == pytest.approx((p.argmax(1) == truth).mean())
    text = (run_dir / "table4_1.md").read_text()
    assert "Pretrained weights: conv3_student starts from the chestkd model" in text
    assert ("Every setup learnt" in text) != ("NOT the paper's story" in text)
    # the 14-class model of another task initialised everything but its head
    transfer = json.loads((run_dir / "transfer.json").read_text())["transfer_model"]
    assert transfer["not_copied"][0]["layer"] == "logits" and len(transfer["copied"]) == 6
    source = keras.models.load_model(transfer["source"], compile=False)
    frozen = keras.models.load_model(run_dir / "frozen" / "model.keras", compile=False)
    tuned = keras.models.load_model(run_dir / "fine_tuned" / "model.keras", compile=False)
    for layer in ("conv1", "conv1_bn", "conv3"):   # the fixed extractor did not move
        for a, b in zip(frozen.get_layer(layer).get_weights(),
                        source.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(tuned.get_layer("conv1").get_weights()[0],
                              frozen.get_layer("conv1").get_weights()[0])
    for a, b in zip(tuned.get_layer("conv1_bn").get_weights(),
                    frozen.get_layer("conv1_bn").get_weights()):
        np.testing.assert_array_equal(a, b)        # finetune_batchnorm=frozen: inference mode
    # the paper's alpha weighs the labels: chestkd's alpha is its complement
    student = yaml.safe_load((run_dir / "student" / "config.yaml").read_text())
    assert student["alpha"] == pytest.approx(0.2) and student["kd_loss"] == "ho2020_eq8"
    # the demo's only augmentation is the flip, so the student reads a cached teacher table
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["augment"] == "flip"
    assert student["teacher_outputs"] == "cached"
    assert (run_dir / "student" / "teacher_logits_train.npy").exists()


def test_weights_that_cannot_work_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet18"):
        transfer_learning.resolve(["weights=imagenet", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="model.keras"):
        transfer_learning.resolve([f"teacher_weights={tmp_path}", "--out", str(tmp_path)])
    config = transfer_learning.resolve(["--out", str(tmp_path), "epochs=2"])
    assert config["image_size"] == 64 and config["epochs"] == 2   # the no-data profile
    assert config["dataset"] == "pneumonia_phantom" and config["augment"] == "flip"
    assert transfer.teacher_outputs(config) == "cached"
    assert transfer.teacher_outputs({"augment": "light"}) == "online"
    with pytest.raises(ConfigError, match="finetune-batchnorm"):
        transfer_learning.resolve(["--out", str(tmp_path), "finetune_batchnorm=partly"])
    paper = transfer_learning.resolve(["--config", str(Path(__file__).parents[1] / "recipes" /
                                                      "transfer_learning.yaml"),
                                       "--data-dir", str(tmp_path), "--out", str(tmp_path)])
    assert (paper["image_size"], paper["augment"], paper["epochs"]) == (224, "light", 10)


def test_predict_applies_a_setup_model_of_exclusive_classes(recipe_run, tmp_path):
    from chestkd import predict
    run_dir, _ = recipe_run
    nih = sorted((Path(__file__).parents[1] / "assets" / "nih").glob("*.png"))
    frame = predict.run([str(run_dir / "student"), *map(str, nih), "--out", str(tmp_path)])[
        "predictions"]
    p = frame[["p_normal", "p_pneumonia"]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)            # softmax
    # exclusive classes: the decision is the arg-max; one-vs-rest thresholds are flags
    assert list(frame["predicted"]) == [["normal", "pneumonia"][i] for i in p.argmax(1)]
    thresholds = json.loads((run_dir / "student" / "model_info.json").read_text())[
        "thresholds"]["youden"]
    for row, probs in zip(frame["per_class_flags"], p):
        hits = [n for n, v, t in zip(["normal", "pneumonia"], probs, thresholds) if v >= t]
        assert row == (";".join(hits) or "none")


def test_table_row_decides_at_the_validation_threshold_not_the_arg_max(tmp_path):
    """A model that ranks every film right but puts them all in one class at p = 0.5 (its
    logits shifted, as a student pulled towards a flat teacher): the table scores the
    decision at the positive class's validation threshold, and keeps the arg-max beside it."""
    truth = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p_positive = np.array([0.05, 0.10, 0.20, 0.30, 0.32, 0.35, 0.40, 0.45])   # all < 0.5
    logits = np.log(np.stack([1 - p_positive, p_positive], 1))
    folder = tmp_path / "student"
    folder.mkdir()
    np.savez(folder / "test_predictions.npz", logits=logits, labels=np.eye(2)[truth],
             class_names=np.array(["normal", "pneumonia"]))
    results = {"model": "m", "per_class_auc": {"pneumonia": 1.0},
               "per_class_auc_ci": {"pneumonia": [1.0, 1.0]},
               "thresholds": {"values": [0.9, 0.25]}, "params": {"total": 10},
               "latency": {"median_ms": 1.0}}
    row = transfer.table_row("student", "Student", folder, results, positive=1)
    assert row["threshold"] == 0.25
    assert row["accuracy"] == 1.0 and row["recall"] == 1.0 and row["precision"] == 1.0
    assert row["accuracy_argmax"] == pytest.approx(3 / 8)     # every film called normal
    # a threshold between the classes' scores that misses one positive
    results["thresholds"]["values"] = [0.9, 0.31]
    row = transfer.table_row("student", "Student", folder, results, positive=1)
    assert row["recall"] == pytest.approx(4 / 5) and row["precision"] == 1.0
    assert row["accuracy"] == pytest.approx(7 / 8)
    assert row["f1"] == pytest.approx(2 * 0.8 / 1.8)


def test_the_verdict_names_setups_whose_interval_reaches_one_half():
    rows = [{"setup": title, "auc": auc, "auc_ci": ci, "parameters": n}
            for (_, title), auc, ci, n in zip(
                transfer.SETUPS, [0.70, 0.80, 0.85, 0.90, 0.89],
                [[0.6, 0.8], [0.7, 0.9], [0.49, 0.95], [0.8, 0.95], [0.8, 0.95]],
                [2, 11, 11, 23, 11])]
    text = transfer.verdict(rows)
    assert text.startswith("NOT the paper's story") and transfer.SETUPS[2][1] in text
    assert "within 0.02 of the teacher" in text
    rows[3]["auc_ci"], rows[3]["auc"] = [0.42, 0.67], 0.54     # a teacher at chance
    assert "not from distillation" in transfer.verdict(rows)
    rows[3]["auc_ci"], rows[3]["auc"] = [0.8, 0.95], 0.90
    assert transfer.SETUPS[1][1] not in text.split("Transfer vs.")[0]
    rows[2]["auc_ci"] = [0.7, 0.95]
    text = transfer.verdict(rows)
    assert text.startswith("Every setup learnt") and "transfer ahead" in text
    assert "within 0.02 of the teacher" in text



def test_the_demo_profile_is_the_shared_recipe_profile_and_flags_win(tmp_path):
    """The no-data demo's values come through resolve_config's recipe_profiles (one
    phantom-profile mechanism); a flag, key=value or YAML key keeps its value."""
    demo = transfer_learning.RECIPE_PROFILES["phantom"]
    config = transfer_learning.resolve(["--out", str(tmp_path)])
    assert config["profile"] == "phantom"
    assert {k: config[k] for k in demo} == demo
    assert config["_recipe_profiles"] == transfer_learning.RECIPE_PROFILES
    config = transfer_learning.resolve(["--out", str(tmp_path), "--teacher-model", "resnet50",
                                        "pretrain_dataset=phantom", "--checkpoint", "best_val"])
    assert (config["teacher_model"], config["pretrain_dataset"], config["checkpoint"]) == (
        "resnet50", "phantom", "best_val")
    assert config["image_size"] == demo["image_size"]
    with pytest.raises(ConfigError, match="pretrain-dataset"):
        transfer_learning.resolve(["--out", str(tmp_path), "pretrain_dataset=imagenet"])


def test_the_pneumonia_source_task_shares_no_film_with_the_target(tmp_path, monkeypatch):
    """pretrain_dataset: pneumonia_phantom draws its films with another seed: no source
    film equals a target film (a copy would leak test films into the pretraining)."""
    import hashlib

    from chestkd.experiments.transfer import pretraining_config
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path))
    config = transfer_learning.resolve(["--out", str(tmp_path), "phantom_images=40",
                                        "pretrain_images=40", "phantom_size=32",
                                        "image_size=32"])
    pre = pretraining_config(config)
    assert pre["dataset"] == "pneumonia_phantom" and pre["classes"] is None
    target, _ = transfer_learning.prepare_run_data(config, tmp_path)
    source, _ = transfer_learning.prepare_run_data(pre, tmp_path)
    assert list(source.class_names) == ["normal", "pneumonia", "covid19"]

    def digests(data):
        return {hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in data.paths}
    assert digests(source).isdisjoint(digests(target))


def test_reestimated_batchnorm_statistics_are_those_of_the_training_images(tmp_path,
                                                                          monkeypatch):
    """After fine-tuning, BatchNorm's moving statistics are set to the exact mean and variance
    of each layer's input over the training split (float64 reference for the first layer)
    and saved with the model; a few hundred steps at momentum 0.99 leave them near their
    start, which put the demo's phantom-pretrained models at chance in inference mode."""
    import types

    import tensorflow as tf

    from chestkd.experiments import transfer
    keras.utils.set_random_seed(3)
    model = build("conv3_student", 2, SHAPE)
    x = np.random.default_rng(1).uniform(-1, 1, (20, *SHAPE)).astype("float32") * 0.5 + 0.3
    y = np.eye(2, dtype="float32")[[0, 1] * 10]
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    monkeypatch.setattr(transfer, "pipelines", lambda data, config: (batches, None))
    data = types.SimpleNamespace(split=np.array(["train"] * 20 + ["val"] * 4))
    assert transfer.reestimate_statistics(model, data, {"batch_size": 8}, tmp_path) == 20
    conv = keras.Model(model.input, model.get_layer("conv1").output)(x).numpy()
    conv = conv.astype("float64").reshape(-1, conv.shape[-1])
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    for held in (model, saved):
        bn = held.get_layer("conv1_bn")
        np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var(0), rtol=1e-3,
                                   atol=1e-5)


def test_distilling_from_setup_3_gives_its_model_back_as_it_was(tmp_path, monkeypatch):
    # The Distiller freezes its teacher; setup 3's model, the teacher when the teacher would
    # repeat setups 2-3, was then scored with 0 trainable parameters in its row and card.
    from chestkd.distill import Distiller, KDLoss
    from chestkd.training.config import resolve_config
    from chestkd.training.options import run_options

    teacher = build("conv3_student", 2, SHAPE)
    teacher.get_layer("conv1_bn").trainable = False      # finetune_batchnorm=frozen
    before = [(layer.name, layer.trainable) for layer in teacher._flatten_layers()]
    counted = sum(int(np.prod(w.shape)) for w in teacher.trainable_weights)

    def distil(options, folder, data, teacher, name, init_from):
        Distiller(build("conv3_student", 2, SHAPE), teacher,  # freezes it, as in a run
                  loss=KDLoss("hinton", 2.0), multi_label=False)
        assert not teacher.trainable_weights
        return init_from
    monkeypatch.setattr(transfer, "distil", distil)
    monkeypatch.setattr(transfer, "initial_model", lambda *args: ("student", {}))
    options = run_options(resolve_config(["transfer_model=conv3_student"],
                                         transfer_learning.DEFAULTS))
    transfer.distil_student(options, transfer.transfer_options(options.config), None, teacher,
                            tmp_path / "student", tmp_path)
    assert [(layer.name, layer.trainable) for layer in teacher._flatten_layers()] == before
    assert sum(int(np.prod(w.shape)) for w in teacher.trainable_weights) == counted > 0


def test_a_model_option_is_refused_not_replaced(tmp_path, capsys):
    # --model named the run folder only and was silently replaced by transfer_model.
    with pytest.raises(SystemExit) as caught:
        transfer_learning.main(["--model", "resnet50", "--out", str(tmp_path)])
    assert caught.value.code == 2
    assert "--model resnet50: transfer_learning trains several models; name them with " \
        "transfer_model=" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
