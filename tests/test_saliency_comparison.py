"""The main job's saliency stage: base and self-trained side by side, scored with intervals."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

from chestkd.training.options import as_options
from chestkd.data.dataset import Dataset  # noqa: E402
from chestkd.training.run import Stages  # noqa: E402

SIZE = 32


def small_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(x)
    return keras.Model(inputs, layers.Dense(2, name="logits")(layers.GlobalAveragePooling2D(
        name="features_pool")(x)))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    from chestkd.recipes import self_training

    # The recipe's CPU settings, lighter where only the test's run time changes.
    lighter = {**self_training.CPU_SALIENCY, "figure_images": 2, "sanity_steps": 2,
               "method_options": {"smoothgrad": {"samples": 4},
                                  "smoothgrad_ig": {"samples": 2, "steps": 4}}}
    patch = pytest.MonkeyPatch()
    patch.setattr(self_training, "CPU_SALIENCY", lighter)

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(5):
        path = folder / f"img{k}.png"
        cv2.imwrite(str(path), rng.integers(30, 220, (SIZE, SIZE), dtype=np.uint8))
        paths.append(str(path))
    boxes = pd.DataFrame({"image": [f"img{k}.png" for k in range(5)], "path": paths,
                          "label": ["Mass", "Nodule", "Mass", "Nodule", "Mass"],
                          "x": [2, 18, 6, 10, 20], "y": [3, 16, 8, 4, 20], "w": [8, 10, 6, 8, 9],
                          "h": [8, 9, 7, 8, 6]})
    data = Dataset(name="tiny", class_names=["Mass", "Nodule"], multi_label=True,
                   paths=np.array(paths), labels=np.array([[1, 0], [0, 1], [1, 0], [0, 1],
                                                           [1, 0]]),
                   patients=np.array(list("abcde")), split=np.array(["test"] * 5), boxes=boxes)
    run_dir = tmp_path_factory.mktemp("run")
    options = as_options({"image_size": SIZE, "normalization": "minus_one_one", "seed": 0})
    try:
        stages = Stages(run_dir)
        yield run_dir, self_training.saliency_stage(options, data, run_dir, stages,
                                                    small_model(1), small_model(2))
    finally:
        patch.undo()


def test_base_and_self_trained_are_shown_and_scored_side_by_side(stage):
    run_dir, report = stage
    # written once: the stage is marked, and what it returns is what it wrote
    assert Stages(run_dir).done("figures")
    assert report == json.loads((run_dir / "saliency" / "report.json").read_text())
    assert set(report["figures"]) >= {"fig4", "fig5", "models", "checkerboard", "sanity"}
    for path in report["figures"].values():
        assert os.path.getsize(path) > 5000
    assert "CPU settings" in report["display"]["caption"]
    assert "SmoothGrad-IG 2 x 4" in report["display"]["caption"]     # the settings used
    assert report["display"]["stem_stride"] == 2 and report["display"]["sigma"] == 1.0
    assert {e["finding"] for e in report["examples"]} == {"Mass", "Nodule"}
    assert all({"probability_base", "probability_self-trained"} <= set(e)
               for e in report["examples"])
    table = pd.read_csv(run_dir / "saliency" / "localisation.csv")
    assert set(table["model"].fillna("")) == {"self-trained", "base", ""}
    overall = table[(table["label"] == "all") & (table["method"] == "smoothgrad_ig")]
    assert len(overall) == 2 and (overall["boxes"] == 5).all()
    assert (overall["pointing_lo"] <= overall["pointing"]).all()
    assert (overall["pointing"] <= overall["pointing_hi"]).all()
    vs_centre = pd.read_csv(run_dir / "saliency" / "localisation_vs_centre.csv")
    assert set(vs_centre["verdict"]) <= {"beats centre", "worse than centre",
                                         "not distinguishable"}
    text = (run_dir / "saliency" / "localisation.md").read_text()
    assert "Against the centre baseline" in text and "**base / cam**" in text
    assert set(report["sanity"]["verdicts"]) == {"vanilla", "guided_backprop",
                                                 "integrated_gradients", "gradcam"}
    assert "| guided_backprop |" in (run_dir / "saliency" / "sanity.md").read_text()
