"""RoS-KD end to end at tiny settings: the default study list with Baselines I and III, two
teachers trained on their subsets, three epochs, 32-px images."""
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from chestkd.errors import ConfigError
from chestkd.experiments.ros_settings import LABELS, ros_options
from chestkd.recipes import ros_kd
from chestkd.training.options import run_options
from chestkd.training.run import load_model

EIGHT = "[Atelectasis,Cardiomegaly,Effusion,Infiltration,Mass,Nodule,Pneumonia,Pneumothorax]"


class EpochEndWeights(keras.callbacks.Callback):
    """The student's trainable weights at the end of every epoch (raw: this callback runs
    after the averaging callback has put the raw weights back) and at the end of training."""

    def __init__(self):
        super().__init__()
        self.epochs, self.final = [], None

    def _student(self):
        return [np.asarray(w, np.float64) for w in self.model.student.trainable_weights]

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self._student())

    def on_train_end(self, logs=None):
        self.final = self._student()


@pytest.fixture(scope="module")
def ros_run(tmp_path_factory):
    """The default study list with Baselines I and III, three epochs, averaging after a
    warm-up of one; records what each store model trained on and the students' epoch-end
    weights."""
    from chestkd.data.phantom import write_phantom
    # RoS-KD trains through the one distillation loop, experiments.kd.distil
    from chestkd.experiments import kd as kd_module
    from chestkd.experiments import store
    root = tmp_path_factory.mktemp("ros")
    data = write_phantom(root / "data", images=64, size=32, seed=2)
    trained, weights = [], {}
    train_classifier, fit = store.train_classifier, kd_module.fit

    def recording_train_classifier(config, folder, part, name, **kwargs):
        rows = part.split == "train"
        trained.append({"folder": Path(folder), "name": name,
                        "paths": set(part.paths[rows]), "patients": set(part.patients[rows])})
        return train_classifier(config, folder, part, name, **kwargs)

    def recording_fit(model, train, val, config, folder, **kwargs):
        recorder = EpochEndWeights()
        kwargs["extra_callbacks"] = [*kwargs.get("extra_callbacks", ()), recorder]
        weights[Path(folder).name] = recorder
        return fit(model, train, val, config, folder, **kwargs)

    # Two zoo teachers, each trained (one epoch) on its own overlapping patient subset.
    teachers = ["conv3_student", "conv3_student"]
    argv = ["--dataset", "chestxray14", "--data-dir", str(data), "--out", str(root / "runs"),
            "split=patient", f"labels={EIGHT}", "--image-size", "32", "--batch-size", "16",
            "--epochs", "3", "teacher_epochs=1", "--learning-rate", "0.01",
            "--schedule", "constant",
            "latency_images=1", "bootstrap=0", "jit_compile=false", "saliency=false",
            "--teachers", ",".join(teachers), "--student", "conv3_student",
            "--subsets", "2", "--overlap", "0.5", "--baselines", "I,III",
            "--averaging-start", "1", "overlap_study=[0.5]", "student_study=[conv3_student]",
            "fold_seeds=[0]", "robustness_images=8", "pgd_steps=2", "landscape_images=8",
            "landscape_resolution=2"]          # --studies: the default list, all seven
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "train_classifier", recording_train_classifier)
        patch.setattr(kd_module, "fit", recording_fit)
        results = ros_kd.run(argv)
    run_dir = next((root / "runs").glob("ros_kd-conv3_student-*"))
    return results, run_dir, argv, trained, weights


ROS_FOLDER = "ros_kd-conv3_student-k2-p0.5-noise0-seed0"


def load_config(run_dir):
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def test_ros_kd_writes_every_default_study_with_baseline_one(ros_run):
    results, run_dir, argv, _, _ = ros_run
    assert set(ros_kd.DEFAULTS["studies"]) == {"table1", "overlap", "students", "folds",
                                               "robustness", "noise", "landscape"}
    table1 = pd.read_csv(run_dir / "table1.csv")
    assert list(table1["key"]) == ["I", "III", "ros_kd"]
    assert table1[["precision", "recall", "f1", "mean_auc"]].notna().all().all()
    ros = table1.set_index("key").loc["ros_kd"]
    assert np.isfinite(ros["raw_mean_auc"])        # the raw student's score beside it
    folder = run_dir / "settings" / ROS_FOLDER
    history = pd.read_csv(folder / "history.csv")
    assert {"raw_val_auc", "averaged_epochs"} <= set(history.columns)
    assert list(history["averaged_epochs"]) == [0, 1, 2]
    table3 = pd.read_csv(run_dir / "table3.csv")
    assert list(table3["class"])[:8] == EIGHT.strip("[]").split(",")
    # Table II: Baseline I's model (from the model store) is attacked like the others
    table2 = pd.read_csv(run_dir / "table2.csv")
    assert list(zip(table2["setting"], table2["attack"])) == [
        (LABELS[k], a) for k in ("I", "III", "ros_kd") for a in ("fgsm", "pgd")]
    np.testing.assert_allclose(table2["epsilon"], 1.28 / 255)
    baseline = run_dir / "settings" / "I-conv3_student-noise0-seed0"
    assert (baseline / "model.keras").exists()
    assert json.loads((baseline / "setting.json").read_text())["setting"] == "I"
    landscape = pd.read_csv(run_dir / "landscape.csv")
    assert list(landscape["setting"]) == [LABELS["III"], LABELS["ros_kd"]]
    assert (landscape["grid_points"] == 9).all()    # resolution 2, plus the centre
    for name in ("table1", "overlap", "students", "table2", "table3", "landscape"):
        assert (run_dir / f"{name}.md").read_text().startswith("# ")
    assert "Baseline III: Eq. 4 with fixed weights 1/K" in (run_dir / "table1.md").read_text()
    assert results["table1"][2]["setting"] == "RoS-KD"


def test_the_saved_ros_kd_model_is_the_mean_of_the_epoch_end_weights(ros_run):
    """Three epochs, averaging after a warm-up of one: the averaged model is
    (W2 + W3) / 2 (W1 left out), not the raw W3; the checkpoint is the average at the best
    averaged epoch."""
    _, run_dir, _, _, weights = ros_run
    folder = run_dir / "settings" / ROS_FOLDER
    recorded = weights[ROS_FOLDER]
    assert len(recorded.epochs) == 3
    w1, w2, w3 = recorded.epochs
    mean = [(a + b) / 2 for a, b in zip(w2, w3)]
    for final, expected in zip(recorded.final, mean):       # the model after fit
        np.testing.assert_allclose(final, expected, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(mean, w3))
    assert any(not np.allclose(a, b) for a, b in zip(w1, w2))
    raw = load_model(folder / "raw_model.keras")
    for variable, expected in zip(raw.trainable_weights, w3):
        np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-6, atol=1e-7)
    # model.keras: the average at the epoch of the best averaged val_auc (epochs 2 and 3)
    history = pd.read_csv(folder / "history.csv")
    best = 2 if history["val_auc"].iloc[1] >= history["val_auc"].iloc[2] else 3
    expected = w2 if best == 2 else mean
    saved = load_model(folder / "model.keras")
    for variable, value in zip(saved.trainable_weights, expected):
        np.testing.assert_allclose(np.asarray(variable), value, rtol=1e-6, atol=1e-7)


def test_each_teacher_trained_on_the_rows_of_its_own_subset(ros_run):
    """The rows each store model was trained on: Baseline I on the whole training split, the
    two teachers on whole patients, a shared core of floor(P * 0.5 / 1.5) patients and two
    disjoint blocks; III and RoS-KD share those two teachers (trained once)."""
    _, run_dir, _, trained, _ = ros_run
    full = max(trained, key=lambda r: len(r["paths"]))
    subsets = [r for r in trained if r is not full]
    assert len(trained) == 3 and len(subsets) == 2
    patients = full["patients"]
    core = subsets[0]["patients"] & subsets[1]["patients"]
    assert len(core) == (len(patients) * 1) // 3       # p / (p + k (1 - p)) = 1/3
    rest = len(patients) - len(core)
    assert sorted(len(r["patients"]) - len(core) for r in subsets) == \
        sorted([rest // 2, rest - rest // 2])
    assert subsets[0]["patients"] | subsets[1]["patients"] == patients
    # whole patients: a teacher saw every training image of each of its patients
    data = ros_kd.RosSettings(load_config(run_dir), run_dir).data(0.0, 0)
    train = data.split == "train"
    for record in subsets:
        rows = train & np.isin(data.patients, list(record["patients"]))
        assert record["paths"] == set(data.paths[rows])
    settings = {k: json.loads((run_dir / "settings" / f / "setting.json").read_text())
                for k, f in (("III", "III-conv3_student-k2-p0.5-noise0-seed0"),
                             ("ros_kd", ROS_FOLDER))}
    assert settings["III"]["teachers"] == settings["ros_kd"]["teachers"]
    assert (settings["III"]["sampling"], settings["III"]["combine"]) == ("fixed", "losses")
    assert (settings["ros_kd"]["sampling"], settings["ros_kd"]["combine"],
            settings["ros_kd"]["weight_draw"]) == ("random", "losses", "normalised")
    # one (images x 2 views x K teachers x C) logit table for the teacher set
    tables = sorted(run_dir.glob("teacher_tables/*/teacher_logits_train.npy"))
    assert len(tables) == 1 and np.load(tables[0]).shape[1:] == (2, 2, 8)


def test_resume_reuses_every_finished_setting(ros_run, capsys):
    _, run_dir, _, _, _ = ros_run
    before = {p: p.stat().st_mtime for p in run_dir.glob("settings/*/model.keras")}
    ros_kd.run(["--resume", str(run_dir)])
    assert {p: p.stat().st_mtime for p in run_dir.glob("settings/*/model.keras")} == before
    assert "=== " not in capsys.readouterr().out      # nothing trained again


def test_bad_options_name_themselves():
    with pytest.raises(ConfigError, match="baselines"):
        ros_options({**ros_kd.DEFAULTS, "baselines": "VI"})
    with pytest.raises(ConfigError, match="teacher-sampling"):
        ros_options({**ros_kd.DEFAULTS, "teacher_sampling": "fixed"})
    for key in ("overlap_mode", "weight_draw", "baseline_iii_teachers", "baseline_iii_combine"):
        with pytest.raises(ConfigError, match=key.replace("_", "-")):
            ros_options({**ros_kd.DEFAULTS, key: "nonsense"})
    with pytest.raises(ConfigError, match="weight_draw"):
        ros_options({**ros_kd.DEFAULTS, "weight_draw": "exponential",
                                 "teacher_combine": "logits"})
    with pytest.raises(ConfigError, match="confidence_temperature"):
        ros_options({**ros_kd.DEFAULTS, "confidence_temperature": 0})
    # the README's options are accepted
    ros_options({**ros_kd.DEFAULTS, "teacher_sampling": "confidence",
                             "confidence_temperature": 0.5, "weight_draw": "exponential",
                             "overlap_mode": "circle"})


@pytest.mark.parametrize("weight_draw", ["normalised", "exponential"])
def test_the_random_weights_and_the_eq4_loss_against_numpy(weight_draw):
    """Eq. 4: (1 - alpha) CE + alpha sum_k w_k KL_k, with w_k = -log U (exponential, the
    paper's draw) or that divided by its sum (normalised), U keyed by (seed, step)."""
    import tensorflow as tf
    from chestkd.distill.distiller import Distiller
    from chestkd.distill.kd_loss import KDLoss
    keras.utils.set_random_seed(0)
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    loss = KDLoss("hinton", 2.0, 0.7)
    distiller = Distiller(student, None, loss=loss, multi_label=False, teacher_sampling="random",
                          teacher_combine="losses", weight_draw=weight_draw, seed=11)
    distiller.compile(optimizer="sgd")
    uniform = tf.random.stateless_uniform((4,), seed=tf.constant([11, 0], tf.int64),
                                          minval=1e-12, maxval=1.0).numpy().astype(np.float64)
    draws = -np.log(uniform)
    expected = draws if weight_draw == "exponential" else draws / draws.sum()
    weights = np.asarray(distiller.teacher_mixing_weights(4, training=True), np.float64)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(5, 4)).astype(np.float32)
    teachers = rng.normal(size=(5, 4, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    _, targets = distiller.teacher_targets({"image": images, "teacher_logits": teachers},
                                           training=True)
    z = np.asarray(student(images), np.float64)
    losses = distiller.compute_kd_losses(y, student(images), targets)

    def log_softmax(v):
        v = v - v.max(-1, keepdims=True)
        return v - np.log(np.exp(v).sum(-1, keepdims=True))

    tau = 2.0
    log_p = log_softmax(z / tau)
    kl = np.stack([(np.exp(log_softmax(teachers[:, k] / tau)) *
                    (log_softmax(teachers[:, k] / tau) - log_p)).sum(1) for k in range(4)], 1)
    soft = tau ** 2 * (kl * expected[None, :]).sum(1)
    hard = -(y * log_softmax(z)).sum(1)
    np.testing.assert_allclose(float(losses["soft_loss"]), soft.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(losses["loss"]), (0.3 * hard + 0.7 * soft).mean(),
                               rtol=1e-5)
    with pytest.raises(ConfigError, match="weight_draw"):
        Distiller(student, None, loss=loss, teacher_sampling="random", weight_draw="exponential")


class FakeExperiment:
    """Settings as rows without training: the studies' bookkeeping alone."""

    def __init__(self, tmp_path, **config):
        self.config = {**ros_kd.DEFAULTS, "dataset": "phantom", "label_noise": 0.1,
                       **config}
        self.options, self.ros = run_options(self.config, check=False), ros_options(self.config)
        self.run_dir, self.calls = tmp_path, []

    def folder(self, name, student, overlap, noise, seed):
        folder = self.run_dir / f"{name}-{student}-{overlap}-{noise}-{seed}"
        folder.mkdir(exist_ok=True)
        auc = 0.6 + 0.1 * seed
        (folder / "metrics.json").write_text(json.dumps(
            {"mean_auc": auc, "per_class_auc": {"A": auc, "B": auc + 0.1, "C": None}}))
        return folder

    def setting(self, name, *, student=None, overlap=None, noise=None, seed=None):
        student = student or self.config["student"]
        overlap = self.config["overlap"] if overlap is None else overlap
        noise = self.config["label_noise"] if noise is None else noise
        seed = self.config["seed"] if seed is None else seed
        self.calls.append((name, student, overlap, noise, seed))
        return {"setting": LABELS[name], "key": name, "student": student,
                "overlap": overlap, "noise": noise, "seed": seed, "f1": 0.5,
                "folder": str(self.folder(name, student, overlap, noise, seed))}


def test_studies_ask_for_the_settings_of_each_figure_and_table(tmp_path):
    from chestkd.experiments.ros_studies import run_studies, write_table
    fake = FakeExperiment(tmp_path, baselines=["I", "III"], overlap_study=[0.0, 1.0],
                          student_study=["resnet18", "mobilenet_v2"], fold_seeds=[0, 1, 2],
                          noise_levels=[0.0, 0.2])
    results = run_studies(fake, ["table1", "overlap", "students", "folds", "noise"],
                          write_table)
    assert [r["key"] for r in results["table1"]] == ["I", "III", "ros_kd"]
    assert [(r["key"], r["overlap"]) for r in results["overlap"]] == [
        ("ros_kd", 0.0), ("ros_kd", 1.0), ("III", 0.4)]
    assert [(r["key"], r["student"]) for r in results["students"]] == [
        ("III", "resnet18"), ("ros_kd", "resnet18"), ("III", "mobilenet_v2"),
        ("ros_kd", "mobilenet_v2")]
    assert [(r["key"], r["noise"]) for r in results["noise"]] == [
        (k, n) for n in (0.0, 0.2) for k in ("I", "III", "ros_kd")]
    table3 = pd.read_csv(tmp_path / "table3.csv").set_index("class")
    assert table3.loc["A", "mean"] == pytest.approx(0.7)
    assert table3.loc["A", "std"] == pytest.approx(0.1)          # sample std of .6,.7,.8
    assert table3.loc["Mean", "mean"] == pytest.approx(0.7)
    assert np.isnan(table3.loc["C", "mean"])                      # undefined in every run
    for name in ("table1", "overlap", "students", "table3", "noise"):
        assert (tmp_path / f"{name}.md").read_text().startswith("# ")


def test_robustness_and_landscape_commands_work_on_a_setting(ros_run, tmp_path):
    from chestkd.landscape import main as landscape_main
    from chestkd.robustness.__main__ import main as robustness_main
    _, run_dir, _, _, _ = ros_run
    folder = run_dir / "settings" / ROS_FOLDER
    assert robustness_main([str(folder), "--max-images", "4", "--steps", "1", "--norm", "linf",
                            "--out", str(tmp_path / "r")]) == 0
    table = pd.read_csv(tmp_path / "r" / "robustness.csv")
    assert list(table["attack"]) == ["fgsm", "pgd"] and (table["images"] == 4).all()
    assert landscape_main([str(folder), "--images", "4", "--resolution", "2",
                           "--out", str(tmp_path / "l")]) == 0
    assert len(pd.read_csv(tmp_path / "l" / "landscape.csv")) == 9   # 0 added to each axis
    assert (tmp_path / "l" / "landscape.png").exists()
    with pytest.raises(SystemExit) as error:      # not a run: exit 2 naming the folder
        robustness_main([str(tmp_path), "--out", str(tmp_path / "x")])
    assert error.value.code == 2


@pytest.mark.parametrize("setting", ["I-conv3_student-noise0-seed0", ROS_FOLDER])
def test_the_robustness_command_scores_as_the_settings_evaluation(ros_run, tmp_path, setting):
    """Before the attack, the command's macro scores on the whole test split are the
    evaluation's (thresholds chosen on the validation split), Baseline I included."""
    from chestkd.experiments.ros import macro_scores
    from chestkd.robustness.__main__ import run as robustness_run
    _, run_dir, _, _, _ = ros_run
    folder = run_dir / "settings" / setting
    info = json.loads((folder / "model_info.json").read_text())
    result = robustness_run([str(folder), "--steps", "1", "--attacks", "fgsm",
                             "--out", str(tmp_path)])
    assert result["thresholds"] == pytest.approx(info["thresholds"]["values"])
    expected = macro_scores(folder)
    for key in ("precision", "recall", "f1"):
        assert result["rows"][0][f"before_{key}"] == pytest.approx(expected[key], abs=1e-9)


def test_a_study_variant_never_rewrites_the_runs_config(tmp_path):
    # The noise and folds studies read the data at another label noise or seed; with a
    # mean_std estimate to record, that variant was written over the run's config.yaml, and
    # --resume then continued at seed 2 and noise 0.2.
    from chestkd.data.phantom import write_phantom
    from chestkd.experiments.ros_settings import RosSettings
    from chestkd.training.config import resolve_config
    from chestkd.training.run import open_run
    data = write_phantom(tmp_path / "data", images=64, size=32, seed=2)
    config = resolve_config(["--dataset", "phantom", "--data-dir", str(data),
                             "--out", str(tmp_path / "runs"), "split=patient",
                             "--image-size", "32", "normalization=mean_std",
                             "label_noise=0.1"], ros_kd.DEFAULTS)
    run_dir, options = open_run(run_options(config), "ros_kd")
    settings = RosSettings(options, run_dir)
    settings.data(0.1, 0)
    own = load_config(run_dir)
    assert (own["seed"], own["label_noise"]) == (0, 0.1) and len(own["mean_std"]) == 2
    settings.data(0.2, 2)
    assert load_config(run_dir) == own
    other = settings.variant(0.2, 2)
    assert (other.seed, other.config["label_noise"]) == (2, 0.2)
