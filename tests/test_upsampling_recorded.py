"""A run on images smaller than its input size says so, records it and puts it on the model card."""
import json

import cv2
import numpy as np

from chestkd.data import load_dataset
from chestkd.evaluation.model_card import model_card
from chestkd.training.classifier import record_upsampling


def small_folder(root, size=16, per_class=6):
    rng = np.random.default_rng(0)
    for name in ("normal", "pneumonia"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (size, size), dtype=np.uint8)
            cv2.imwrite(str(root / name / f"p{i}_{name}.png"), image)
    return root


def test_the_run_reports_records_and_cards_the_upsampling(tmp_path, capsys):
    data = load_dataset("folder", small_folder(tmp_path / "data"))
    record_upsampling(data, 32, None, tmp_path)
    assert "12 of 12 images are smaller than the input size (32 px)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "upsampling.json").read_text())
    assert saved["upsampled"] == 12 and saved["max_factor"] == 2.0
    thresholds = {"rule": "youden", "split": "val", "class_names": data.class_names,
                  "youden": [0.5, 0.5], "f1": [0.5, 0.5]}
    results = {"model": "conv3_student", "test_images": 4, "test_patients": 4,
               "mean_auc": 0.5, "per_class_auc": {"normal": 0.5, "pneumonia": 0.5},
               "thresholds": thresholds}
    card = model_card(results, data, {"image_size": 32, "normalization": "minus_one_one"})
    assert "12 of 12 images are smaller than the input size (32 px) and are upsampled" in card


def test_images_at_the_input_size_are_not_called_upsampled(tmp_path, capsys):
    data = load_dataset("folder", small_folder(tmp_path / "data", size=32))
    record_upsampling(data, 32, None, tmp_path)
    assert "none upsampled" in capsys.readouterr().out
    assert json.loads((tmp_path / "upsampling.json").read_text())["upsampled"] == 0
