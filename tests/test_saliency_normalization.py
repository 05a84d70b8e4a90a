"""The saliency report explains the input values the model saw, for every normalisation.

The report reads its images with the evaluation pipeline (``make_dataset``); these tests
compare what it feeds the saliency methods with the pipeline's own output, on images whose
size (50 px) is not a multiple of the model input (32 px), so any second implementation of
decoding, resizing or normalising would show.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from keras import layers  # noqa: E402

from chestkd.data.dataset import Dataset  # noqa: E402
from chestkd.data.pipeline import NORMALIZATIONS, make_dataset  # noqa: E402
from chestkd.errors import ConfigError  # noqa: E402
from chestkd.saliency import __main__ as cli  # noqa: E402
from chestkd.saliency.report import writer as report  # noqa: E402

SIZE, DISK = 32, 50
MEAN_STD = (0.45, 0.2)


@pytest.fixture(scope="module")
def linear_model():
    """logit_c = sum(kernel_c * x) + b_c: its probabilities reveal the exact input."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, layers.Dense(2, name="logits")(layers.Flatten()(inputs)))


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        path = tmp_path / f"img{k}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (DISK, DISK), dtype=np.uint8))
        paths.append(str(path))
    boxes = pd.DataFrame({"image": ["img0.png", "img1.png"], "path": paths[:2],
                          "label": ["Mass", "Nodule"], "x": [5, 20], "y": [5, 20],
                          "w": [12, 12], "h": [12, 12]})
    return Dataset(name="tiny", class_names=["Mass", "Nodule"], multi_label=True,
                   paths=np.array(paths), labels=np.array([[1, 0], [0, 1], [0, 0]]),
                   patients=np.array(["a", "b", "c"]), split=np.array(["test"] * 3),
                   boxes=boxes)


def pipeline_images(dataset, rows, normalization, mean_std=None):
    """What training / evaluation feed the model for ``dataset``'s ``rows``."""
    batches = make_dataset(dataset.select(rows), image_size=SIZE, batch_size=8,
                           normalization=normalization, mean_std=mean_std)
    return np.concatenate([x.numpy() for x, _ in batches])


def record_method_inputs(monkeypatch):
    """Record the images the report hands each saliency method."""
    seen = {}
    real = report.saliency_method

    def recording(model, name, **options):
        method = real(model, name, **options)

        def call(images, classes, **kwargs):
            seen[name] = np.array(images)
            return method(images, classes, **kwargs)
        return call
    monkeypatch.setattr(report, "saliency_method", recording)
    return seen


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_read_inputs_is_the_pipeline(dataset, normalization):
    mean_std = MEAN_STD if normalization == "mean_std" else None
    paths = [dataset.paths[2], dataset.paths[0], dataset.paths[2]]       # repeats allowed
    ours = report.read_inputs(dataset, paths, SIZE, normalization, mean_std, batch_size=2)
    np.testing.assert_array_equal(ours, pipeline_images(dataset, [2, 0, 2], normalization,
                                                        mean_std))


def test_zero_one_model_is_explained_on_zero_one_inputs(linear_model, dataset, tmp_path,
                                                        monkeypatch):
    seen = record_method_inputs(monkeypatch)
    result = report.write_saliency_report(
        linear_model, dataset, tmp_path / "out", image_size=SIZE, methods=("vanilla",),
        normalization="zero_one", verbose=0, sanity=False)
    expected = pipeline_images(dataset, [0, 1], "zero_one")
    assert expected.min() >= 0 and expected.max() <= 1
    np.testing.assert_allclose(seen["vanilla"], expected, atol=1e-6)
    # The titles' probabilities come from the same inputs.
    logits = linear_model.predict(expected, verbose=0)
    assert [e["probability"] for e in result["examples"]] == pytest.approx(
        [sigmoid(logits[0, 0]), sigmoid(logits[1, 1])], rel=1e-5)


def test_mean_std_end_to_end(linear_model, dataset, tmp_path, monkeypatch):
    seen = record_method_inputs(monkeypatch)
    out = tmp_path / "out"
    result = report.write_saliency_report(
        linear_model, dataset, out, image_size=SIZE, methods=("vanilla", "smoothgrad"),
        method_options={"smoothgrad": {"samples": 2}}, normalization="mean_std",
        mean_std=list(MEAN_STD), verbose=0, sanity=False)
    expected = pipeline_images(dataset, [0, 1], "mean_std", MEAN_STD)
    for name in ("vanilla", "smoothgrad"):
        np.testing.assert_allclose(seen[name], expected, atol=1e-6)
    assert not result["skipped_methods"] and (out / "fig4_saliency.png").exists()
    assert (out / "localisation.csv").exists()


@pytest.mark.parametrize("mean_std, message", [
    (None, "normalization='mean_std' needs mean_std=\\(mean, std\\)"),
    ((0.5,), "two numbers"), ((0.5, 0.0), "std > 0"), (("a", "b"), "two numbers")])
def test_mean_std_without_values_is_a_config_error(linear_model, dataset, tmp_path,
                                                    mean_std, message):
    with pytest.raises(ConfigError, match=message):
        report.write_saliency_report(linear_model, dataset, tmp_path / "out", image_size=SIZE,
                                     methods=("vanilla",), normalization="mean_std",
                                     mean_std=mean_std, verbose=0)
    assert not (tmp_path / "out" / "fig4_saliency.png").exists()
    with pytest.raises(ConfigError, match="unknown normalization 'zero_to_one'"):
        report.write_saliency_report(linear_model, dataset, tmp_path / "out", image_size=SIZE,
                                     normalization="zero_to_one", verbose=0)


def write_run(run, model, normalization, mean_std):
    run.mkdir()
    model.save(run / "model.keras")
    config = {"dataset": "phantom", "data_dir": None, "image_size": SIZE, "model": "linear",
              "skip_bad_images": False, "views": None, "labels": None, "seed": 0,
              "split": None, "phantom_images": 10, "phantom_size": DISK,
              "normalization": normalization, "mean_std": mean_std}
    (run / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("normalization, mean_std", [
    ("zero_one", None), ("imagenet", None), ("mean_std", [0.3, 0.25])])
def test_command_uses_the_runs_normalization(linear_model, dataset, tmp_path, monkeypatch,
                                             normalization, mean_std):
    write_run(tmp_path / "run", linear_model, normalization, mean_std)
    monkeypatch.setattr("chestkd.data.load_dataset", lambda name, data_dir, **o: dataset)
    seen = record_method_inputs(monkeypatch)
    assert cli.main(["--run", str(tmp_path / "run"), "--methods", "vanilla", "--quiet",
                     "--no-sanity"]) == 0
    np.testing.assert_allclose(seen["vanilla"],
                               pipeline_images(dataset, [0, 1], normalization, mean_std),
                               atol=1e-6)


def test_command_estimates_a_runs_unrecorded_mean_std_as_training_did(
        linear_model, dataset, tmp_path, monkeypatch, capsys):
    """config.yaml is written before training estimates mean_std (experiment.image_options)."""
    from chestkd.training.classifier import image_options

    train = Dataset(**{**dataset.__dict__, "split": np.array(["train", "train", "test"])})
    write_run(tmp_path / "run", linear_model, "mean_std", None)
    monkeypatch.setattr("chestkd.data.load_dataset", lambda name, data_dir, **o: train)
    seen = record_method_inputs(monkeypatch)
    assert cli.main(["--run", str(tmp_path / "run"), "--methods", "vanilla", "--quiet",
                     "--no-sanity", "--classes", "Mass"]) == 0
    trained_with = image_options(train, {"normalization": "mean_std", "mean_std": None,
                                         "image_size": SIZE, "seed": 0})["mean_std"]
    assert "mean_std estimated" in capsys.readouterr().out
    np.testing.assert_allclose(
        seen["vanilla"], pipeline_images(train, [2], "mean_std", trained_with), atol=1e-6)


def test_command_with_model_honours_normalization(linear_model, dataset, tmp_path,
                                                  monkeypatch):
    linear_model.save(tmp_path / "model.keras")
    seen = record_method_inputs(monkeypatch)
    arguments = ["--model", str(tmp_path / "model.keras"), "--images", *dataset.paths[:2],
                 "--image-size", str(SIZE), "--class-names", "Mass", "Nodule", "--methods",
                 "vanilla", "--out", str(tmp_path / "cli"), "--quiet", "--no-sanity"]
    assert cli.main(arguments + ["--normalization", "mean_std", "--mean-std", "0.4", "0.2"]) == 0
    np.testing.assert_allclose(seen["vanilla"],
                               pipeline_images(dataset, [0, 1], "mean_std", (0.4, 0.2)),
                               atol=1e-6)
    assert cli.main(arguments + ["--normalization", "mean_std"]) == 2      # no values: error
