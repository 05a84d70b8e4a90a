"""benchmarks/real_data.py end to end on a tiny generated ChestX-ray14-style set."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"


def _load():
    spec = importlib.util.spec_from_file_location("real_data_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset(root: Path, patients=15, films=3, size=32):
    """Films whose Effusion is a bright centre (a signal 32x32 pixels can see), Nodule
    random; an RGBA file among them; the CSV in the parent folder, with rows of absent
    images, as in a partial download."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(patients):
        for f in range(films):
            name = f"{p + 1:08d}_{f:03d}.png"
            effusion, nodule = rng.random() < 0.4, rng.random() < 0.3
            image = rng.normal(100, 20, (size, size))
            if effusion:
                image[size // 4: 3 * size // 4, size // 4: 3 * size // 4] += 60
            image = np.clip(image, 0, 255).astype(np.uint8)
            if p == 0 and f == 0:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
            cv2.imwrite(str(root / "images" / name), image)
            labels = [n for n, on in (("Effusion", effusion), ("Nodule", nodule)) if on]
            rows.append({"Image Index": name, "Finding Labels": "|".join(labels) or
                         "No Finding", "Patient ID": str(p + 1)})
    rows.append({"Image Index": "99999999_000.png", "Finding Labels": "Mass",
                 "Patient ID": "99999999"})   # listed, not on disk
    pd.DataFrame(rows).to_csv(root.parent / "Data_Entry_2017_v2020.csv", index=False)
    return root


def test_smoke_with_baselines_settings_and_pooled_folds(tmp_path):
    module = _load()
    data = _dataset(tmp_path / "nih" / "dev")
    out = tmp_path / "out"
    argv = [str(data), "--out", str(out), "--settings", "conv3-adam1e-3", "--epochs", "1",
            "--folds", "3", "--tune-folds", "1", "--image-size", "32", "--min-positives", "4",
            "--bootstrap", "50", "--phantom-images", "60", "--pretrain-epochs", "1"]
    summary = module.run(argv)
    report = summary["tables"]["report"]
    assert report["findings"] == ["Effusion", "Nodule"]
    rows = {r["setting"]: r for r in report["rows"]}
    assert set(rows) == {"pixels-lr", "phantom-probe", "conv3-adam1e-3 [best-val]",
                         "conv3-adam1e-3 [last]", "conv3-adam1e-3 [swa]"}
    for row in rows.values():
        assert 0.0 <= row["ci_low"] <= row["mean_auc"] <= row["ci_high"] <= 1.0
    # pooled out-of-fold scores of the pixel baseline see the planted Effusion signal:
    # its mean over Effusion and (random) Nodule is well above chance
    assert rows["pixels-lr"]["mean_auc"] > 0.65
    # each setting against the pixel baseline, paired on the same patient resamples
    assert np.isfinite(rows["phantom-probe"]["diff"]) and np.isnan(rows["pixels-lr"]["diff"])
    assert rows["phantom-probe"]["diff"] == pytest.approx(
        rows["phantom-probe"]["mean_auc"] - rows["pixels-lr"]["mean_auc"])
    assert (out / "table_report.md").read_text().count("| conv3-adam1e-3 [") == 3
    saved = json.loads((out / "results.json").read_text())
    assert saved["tables"]["report"]["images"] + saved["tables"]["tune"]["images"] == 45
    # a second run reuses every fold's saved predictions and gives the same table
    again = module.run(argv)

    def numbers(result):
        return [(r["setting"], r["mean_auc"], r["ci_low"], r["ci_high"])
                for r in result["tables"]["report"]["rows"]]
    assert numbers(again) == numbers(summary)


def test_folds_are_patient_wise_and_cover_every_image():
    module = _load()
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(20).astype(str), 3)
    labels = (rng.random((60, 4)) < 0.3).astype(np.float32)
    fold = module.patient_folds(labels, patients, 5, seed=0)
    assert set(fold) == set(range(5))
    for p in np.unique(patients):
        assert len(set(fold[patients == p])) == 1


def test_a_folder_without_metadata_is_a_user_error(tmp_path, capsys):
    module = _load()
    (tmp_path / "images").mkdir()
    assert module.main([str(tmp_path), "--settings", "none"]) == 2
    assert "no Data_Entry_2017" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown"):
        module.parse_args([str(tmp_path), "--settings", "resnet1000"])
