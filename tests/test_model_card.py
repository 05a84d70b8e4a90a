"""model_card.md: the run's data and split, label source and noise, metrics with intervals,
thresholds, intended use, limitations and the not-for-clinical-use statement."""
import numpy as np

from chestkd.data.dataset import Dataset
from chestkd.evaluation.model_card import NOT_CLINICAL, model_card, write_model_card


def _data():
    labels = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 1, 1, 0, 1]]
    split = np.array(["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    patients = np.array(["a", "a", "b", "c", "d", "e", "f", "g"])
    return Dataset("pneumonia_phantom", ["normal", "pneumonia"], False,
                   [f"/x/{i}.png" for i in range(8)], labels, patients, split)


RESULTS = {
    "model": "resnet18", "test_images": 2, "test_patients": 2, "labels": "clean",
    "mean_auc": 0.875, "mean_auc_ci": [0.8, 0.95], "noisy_mean_auc": 0.81,
    "per_class_auc": {"normal": 0.875, "pneumonia": 0.875},
    "per_class_auc_ci": {"normal": [0.8, 0.95], "pneumonia": [0.79, 0.96]},
    "bootstrap": {"resamples": 1000}, "accuracy": 0.5, "precision": 0.25, "recall": 0.5,
    "f1": 0.3333, "calibration": {"ece": 0.1234, "brier": 0.2},
    "params": {"total": 11_000_000, "trainable": 10_000_000},
    "thresholds": {"rule": "youden", "split": "val (2 images)",
                   "class_names": ["normal", "pneumonia"], "youden": [0.31, 0.69],
                   "f1": [0.2, 0.8], "values": [0.31, 0.69]},
}
CONFIG = {"image_size": 32, "normalization": "minus_one_one", "recipe": "transfer_learning",
          "seed": 3, "label_noise": 0.1}


def test_the_card_states_data_labels_metrics_thresholds_and_use(tmp_path):
    text = model_card(RESULTS, _data(), CONFIG)
    assert text.count(NOT_CLINICAL) == 2  # at the top and at the end
    for heading in ("## Data and split", "## Labels", "## Metrics", "## Decision thresholds",
                    "## Intended use", "## Limitations"):
        assert heading in text, heading
    # images, patients and positives per split, counted from the data
    assert "| train | 4 | 3 | 2 | 2 |" in text
    assert "| val | 2 | 2 | 0 | 2 |" in text and "| test | 2 | 2 | 1 | 1 |" in text
    assert "synthetic" in text and "label_noise = 0.1" in text
    assert "mean AUC: 0.8750 [0.8000, 0.9500]" in text
    assert "| pneumonia | 0.8750 [0.7900, 0.9600] |" in text
    assert "against the noisy labels: 0.8100" in text and "ECE 0.1234" in text
    assert "| pneumonia | 0.6900 | 0.8000 |" in text
    # Exclusive classes: the arg-max decides; the thresholds only flag (regression: the card
    # said the run decided with the youden rule, and called accuracy a macro average).
    assert "the decision is the arg-max, not a threshold" in text
    assert "`per_class_flags` beside it, by the `youden` rule" in text
    assert "decides with" not in text and "* accuracy (arg-max decision): 0.5000" in text
    multi = Dataset("phantom", ["a", "b"], True, [f"/x/{i}.png" for i in range(8)],
                    _data().labels, _data().patients, _data().split)
    assert "This run decides with the `youden` rule" in model_card(RESULTS, multi, CONFIG)
    assert "11,000,000 parameters (10,000,000 trainable)" in text
    path = write_model_card(tmp_path / "model_card.md", RESULTS, _data(), CONFIG)
    assert path.read_text() == text


def test_a_real_dataset_names_its_report_mined_labels_and_no_intervals():
    data = _data()
    data.name = "chestxray14"
    results = {k: v for k, v in RESULTS.items() if k not in ("mean_auc_ci", "bootstrap",
                                                              "per_class_auc_ci")}
    text = model_card(results, data, {**CONFIG, "label_noise": 0.0})
    assert "natural-language processing" in text and "label_noise" not in text
    assert "no intervals (bootstrap = 0)" in text and "mean AUC: 0.8750\n" in text


def test_a_folder_without_patient_ids_is_not_called_patient_wise(tmp_path):
    # The card said "splits are patient-wise (no patient in two splits)" of every dataset,
    # also where each image was taken for its own patient and persons shared splits.
    import cv2

    from chestkd.data import load_dataset
    rng = np.random.default_rng(0)
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / name).mkdir()
        for i in range(6):
            cv2.imwrite(str(tmp_path / name / f"scan{i}_{name}.png"),
                        rng.integers(0, 255, (20, 20), dtype=np.uint8))
    unknown = load_dataset("folder", str(tmp_path))
    text = model_card(RESULTS, unknown, CONFIG)
    assert "patient-wise" not in text
    assert not unknown.patient_ids and not unknown.subset("train").patient_ids
    assert ("no patient ids were given, so each image counted as a patient of its own: images "
            "of one patient may be in different splits") in text
    known = load_dataset("folder", str(tmp_path), patient_regex=r"scan(\d+)_")
    assert known.patient_ids
    assert "splits are patient-wise (no patient in two splits)" in model_card(RESULTS, known,
                                                                               CONFIG)
