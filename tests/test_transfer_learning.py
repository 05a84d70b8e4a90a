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
        "latency_images=2", "jit_compile=false", "learning_rate=0.01", "schedule=constant"])
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
    # the table's accuracy and recall are those of the saved test predictions
    with np.load(run_dir / "student" / "test_predictions.npz") as npz:
        truth, pred = npz["labels"].argmax(1), npz["logits"].argmax(1)
    row = table.set_index("setup").loc[transfer_learning.SETUPS[-1][1]]
    assert row["accuracy"] == pytest.approx((truth == pred).mean())
    assert row["recall"] == pytest.approx((pred[truth == 1] == 1).mean())
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
        np.testing.assert_array_equal(a, b)        # BatchNorm kept in inference mode
    # the paper's alpha weighs the labels: chestkd's alpha is its complement
    student = yaml.safe_load((run_dir / "student" / "config.yaml").read_text())
    assert student["alpha"] == pytest.approx(0.2) and student["kd_loss"] == "ho2020_eq8"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["augment"] == "light"


def test_weights_that_cannot_work_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet18"):
        transfer_learning.resolve(["weights=imagenet", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="model.keras"):
        transfer_learning.resolve([f"teacher_weights={tmp_path}", "--out", str(tmp_path)])
    config = transfer_learning.resolve(["--out", str(tmp_path), "epochs=2"])
    assert config["image_size"] == 64 and config["epochs"] == 2   # the no-data profile
    assert config["dataset"] == "pneumonia_phantom" and config["augment"] == "light"


def test_predict_applies_a_setup_model_of_exclusive_classes(recipe_run, tmp_path):
    from chestkd import predict
    run_dir, _ = recipe_run
    nih = sorted((Path(__file__).parents[1] / "assets" / "nih").glob("*.png"))
    frame = predict.run([str(run_dir / "student"), *map(str, nih), "--out", str(tmp_path)])[
        "predictions"]
    p = frame[["p_normal", "p_pneumonia"]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)            # softmax
    assert list(frame["argmax"]) == [["normal", "pneumonia"][i] for i in p.argmax(1)]
    thresholds = json.loads((run_dir / "student" / "model_info.json").read_text())[
        "thresholds"]["youden"]
    for row, probs in zip(frame["predicted"], p):
        hits = [n for n, v, t in zip(["normal", "pneumonia"], probs, thresholds) if v >= t]
        assert row == (";".join(hits) or "none")
