"""The saliency report and command on a model whose right answer is known.

The model is linear: logit_c = sum(mask_c * x), with mask_0 on rows 2-9 x cols 3-10 and mask_1
on rows 20-27 x cols 22-29 of a 32 x 32 input. Its gradient (vanilla, SmoothGrad) is exactly
mask_c, so a box drawn on that region must score pointing 1, energy 1, IoU 1, while the
centre baseline misses it.
"""
import json
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
from chestkd.errors import ConfigError  # noqa: E402
from chestkd.saliency import __main__ as cli  # noqa: E402
from chestkd.saliency.report import write_saliency_report  # noqa: E402
from chestkd.saliency.report.inputs import select_examples  # noqa: E402

SIZE, DISK = 32, 64            # model input and on-disk image size
REGIONS = [(2, 10, 3, 11), (20, 28, 22, 30)]        # rows [a, b), cols [c, d) per class
DISK_BOXES = [(6, 4, 16, 16), (44, 40, 16, 16)]     # the same regions in 64 px: (x, y, w, h)


@pytest.fixture(scope="module")
def linear_model():
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = layers.Dense(2, name="logits")(layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((SIZE, SIZE, 3, 2), np.float32)
    for c, (r0, r1, c0, c1) in enumerate(REGIONS):
        kernel[r0:r1, c0:c1, :, c] = 1.0
    model.get_layer("logits").set_weights([kernel.reshape(-1, 2), np.array([0.5, -0.5], "f4")])
    return model


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        path = tmp_path / f"img{k}.png"
        cv2.imwrite(str(path), rng.integers(30, 220, (DISK, DISK), dtype=np.uint8))
        paths.append(str(path))
    boxes = pd.DataFrame({"image": ["img0.png", "img1.png"], "path": paths[:2],
                          "label": ["Mass", "Nodule"],
                          "x": [b[0] for b in DISK_BOXES], "y": [b[1] for b in DISK_BOXES],
                          "w": [b[2] for b in DISK_BOXES], "h": [b[3] for b in DISK_BOXES]})
    return Dataset(name="tiny", class_names=["Mass", "Nodule"], multi_label=True,
                   paths=np.array(paths), labels=np.array([[1, 0], [0, 1], [0, 0]]),
                   patients=np.array(["a", "b", "c"]), split=np.array(["test"] * 3),
                   boxes=boxes)


def test_report_scores_known_regions_and_beats_centre(linear_model, dataset, tmp_path):
    out = tmp_path / "saliency"
    result = write_saliency_report(
        linear_model, dataset, out, image_size=SIZE,
        methods=("vanilla", "smoothgrad", "cam"), method_options={"smoothgrad": {"samples": 4}})
    assert result["skipped_methods"].keys() == {"cam"}      # Flatten -> Dense: no CAM head
    assert "GlobalAveragePooling2D" in result["skipped_methods"]["cam"]
    assert [e["finding"] for e in result["examples"]] == ["Mass", "Nodule"]
    # Title probabilities: sigmoid(sum(mask * x) + bias) of the image as the pipeline reads it.
    from chestkd.data.pipeline import make_dataset
    image = next(iter(make_dataset(dataset.select([0]), image_size=SIZE)))[0].numpy()[0]
    logit = image[2:10, 3:11].sum() + 0.5
    assert result["examples"][0]["probability"] == pytest.approx(1 / (1 + np.exp(-logit)),
                                                                 rel=1e-4)
    scores = pd.DataFrame(result["scores"]).set_index(["method", "label"])
    for method in ("vanilla", "smoothgrad"):
        row = scores.loc[(method, "all")]
        assert row["boxes"] == 2 and row["pointing"] == 1.0
        assert row["energy"] == pytest.approx(1.0) and row["mean_iou"] == pytest.approx(1.0)
        assert row["iou>0.7"] == 1.0 and row["mean_iobb"] == pytest.approx(1.0)
    assert scores.loc[("centre", "all"), "pointing"] == 0.0
    assert scores.loc[("centre", "all"), "energy"] < 0.2
    for name in ("fig4", "fig5"):
        figure = cv2.imread(result["figures"][name])
        assert figure is not None and figure.shape[0] > 200 and figure.shape[1] > 300
    assert (out / "localisation.md").read_text().count("| centre |") == 3
    per_box = pd.read_csv(out / "localisation_per_box.csv")
    assert set(per_box["method"]) == {"vanilla", "smoothgrad", "centre"}
    # The linear model's gradient is its mask whatever the input: beyond the centre's interval.
    vs_centre = pd.DataFrame(result["vs_centre"]).set_index(["method", "label", "metric"])
    assert vs_centre.loc[("vanilla", "all", "energy"), "verdict"] == "beats centre"
    assert result["sanity"]["verdicts"]["vanilla"] == "passes"     # its one layer: reset
    assert (out / "sanity.md").exists() and "fig4" in result["figures"]


def test_examples_without_boxes_use_positive_labels_then_predictions(dataset):
    no_boxes = Dataset(**{**dataset.__dict__, "boxes": None})
    examples, boxes = select_examples(no_boxes, no_boxes.class_names, 5)
    assert boxes is None
    assert examples["label"].tolist() == ["Mass", "Nodule", ""]
    assert examples["class_index"].tolist() == [0, 1, -1]
    examples, _ = select_examples(no_boxes, no_boxes.class_names, 4, classes=["Nodule"])
    assert examples["label"].tolist() == ["Nodule"] * 3
    with pytest.raises(ConfigError, match=r"--classes \['Edema'\] not among"):
        select_examples(no_boxes, no_boxes.class_names, 4, classes=["Edema"])


def test_command_with_model_images_and_box_csv(linear_model, dataset, tmp_path, capsys):
    model_path = tmp_path / "model.keras"
    linear_model.save(model_path)
    box_csv = tmp_path / "boxes.csv"
    pd.DataFrame({"image": ["img1.png"], "label": ["Nodule"], "x": [44], "y": [40],
                  "w": [16], "h": [16]}).to_csv(box_csv, index=False)
    out = tmp_path / "cli"
    code = cli.main(["--model", str(model_path), "--images", *dataset.paths[:2],
                     "--boxes", str(box_csv), "--image-size", str(SIZE), "--class-names",
                     "Mass", "Nodule", "--methods", "vanilla", "--out", str(out), "--no-sanity"])
    assert code == 0
    table = pd.read_csv(out / "localisation.csv").set_index(["method", "label"])
    assert table.loc[("vanilla", "Nodule"), "pointing"] == 1.0
    assert table.loc[("vanilla", "Nodule"), "mean_iou"] == pytest.approx(1.0)
    assert (out / "fig4_saliency.png").exists()
    assert (out / "fig5_cam_vs_smoothgrad_ig.png").exists()          # boxes drawn
    assert "pointing" in capsys.readouterr().out


def test_command_reads_a_chestxray14_box_list(linear_model, dataset, tmp_path):
    """BBox_List_2017.csv coordinates are in 1024 x 1024 space, whatever the file size."""
    model_path = tmp_path / "model.keras"
    linear_model.save(model_path)
    box_csv = tmp_path / "BBox_List_2017.csv"
    box_csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                       "img0.png,Mass,96,64,256,256\n")      # = (6, 4, 16, 16) at 64 px
    out = tmp_path / "cli"
    assert cli.main(["--model", str(model_path), "--images", dataset.paths[0], "--boxes",
                     str(box_csv), "--image-size", str(SIZE), "--class-names", "Mass",
                     "Nodule", "--methods", "vanilla", "--out", str(out), "--no-sanity"]) == 0
    table = pd.read_csv(out / "localisation.csv").set_index(["method", "label"])
    assert table.loc[("vanilla", "Mass"), "mean_iou"] == pytest.approx(1.0)


def test_command_with_run_directory(linear_model, dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    linear_model.save(run / "model.keras")
    config = {"dataset": "phantom", "data_dir": None, "image_size": SIZE, "model": "linear",
              "skip_bad_images": False, "views": None, "labels": None, "seed": 0,
              "split": None, "phantom_images": 10, "phantom_size": 64,
              "normalization": "minus_one_one"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    calls = []

    def fake_load_dataset(name, data_dir, **options):
        calls.append((name, data_dir, options))
        return dataset
    monkeypatch.setattr("chestkd.data.load_dataset", fake_load_dataset)
    assert cli.main(["--run", str(run), "--methods", "vanilla", "--max-images", "1",
                     "--no-sanity"]) == 0
    assert calls[0][0] == "phantom" and calls[0][2]["size"] == 64
    table = pd.read_csv(run / "saliency" / "localisation.csv")
    assert table[table.label == "all"]["boxes"].tolist() == [1, 1]


def test_command_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli.main(["--model", str(tmp_path / "missing.keras"), "--images", "x.png",
                     "--image-size", "32"]) == 2
    assert "missing.keras: model file not found" in capsys.readouterr().err
    assert cli.main(["--run", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_a_model_ending_in_softmax_is_explained_with_its_own_probabilities(dataset, tmp_path,
                                                                          capsys):
    # Regression: --model without --single-label scored every model as sigmoid, so a
    # softmax model's report showed sigmoid(logit) (0.544 where the model said 0.361).
    inputs = keras.Input((SIZE, SIZE, 3))
    logits = layers.Dense(3, name="logits")(layers.Flatten()(inputs))
    model = keras.Model(inputs, layers.Activation("softmax")(logits))
    model.get_layer("logits").set_weights(
        [np.random.default_rng(0).normal(0, 0.01, (SIZE * SIZE * 3, 3)).astype("f4"),
         np.zeros(3, "f4")])
    model.save(tmp_path / "softmax.keras")
    argv = ["--model", str(tmp_path / "softmax.keras"), "--images", dataset.paths[0],
            "--image-size", str(SIZE), "--classes", "0", "--methods", "vanilla",
            "--out", str(tmp_path / "out"), "--no-sanity", "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    shown = json.loads(out[out.index('{\n "examples"'):])["examples"][0]["probability"]
    from chestkd.saliency.report.inputs import read_inputs
    data = cli.images_dataset([dataset.paths[0]], ["a", "b", "c"], None)
    own = model.predict(read_inputs(data, data.paths, SIZE), verbose=0)[0, 0]
    assert shown == pytest.approx(float(own), abs=1e-6)
    sigmoid_model = keras.Model(inputs, layers.Activation("sigmoid")(logits))
    sigmoid_model.save(tmp_path / "sigmoid.keras")
    argv[1] = str(tmp_path / "sigmoid.keras")
    assert cli.main([*argv, "--single-label"]) == 2
    assert "--single-label: " in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--bootstrap", "-1"),
                                           ("--max-images", "-1"), ("--max-images", "0"),
                                           ("--figure-images", "0")])
def test_bad_numbers_exit_2_naming_the_option(linear_model, dataset, tmp_path, capsys,
                                              option, value):
    # Regression: tracebacks from TF or NumPy (batch size 0, bootstrap -1), or a silent
    # slice (max images -1 explained 2 of 3 images; figure images 0 fell back to 6).
    linear_model.save(tmp_path / "model.keras")
    assert cli.main(["--model", str(tmp_path / "model.keras"), "--images", *dataset.paths,
                     "--image-size", str(SIZE), f"{option}={value}", "--no-sanity",
                     "--out", str(tmp_path / "out")]) == 2
    assert f"error: {option} {value}: expected an integer >=" in capsys.readouterr().err


def test_a_run_explained_at_another_size_and_a_bad_box_are_named(linear_model, dataset,
                                                                  tmp_path, capsys):
    # Regressions: --run with an --image-size unlike the model's was a Keras traceback; a box
    # with w = 0 was "box row 1" of a filtered table, after every map was computed.
    run = tmp_path / "run"
    run.mkdir()
    linear_model.save(run / "model.keras")
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": "phantom", "image_size": SIZE}))
    assert cli.main(["--run", str(run), "--image-size", "64"]) == 2
    assert "64" in capsys.readouterr().err
    box_csv = tmp_path / "boxes.csv"
    box_csv.write_text("image,label,x,y,w,h\nimg0.png,Mass,6,4,16,16\n\n"
                       "img1.png,Nodule,44,40,0,16\n")           # line 4: a blank line above
    assert cli.main(["--model", str(run / "model.keras"), "--images", *dataset.paths[:2],
                     "--boxes", str(box_csv), "--image-size", str(SIZE), "--no-sanity",
                     "--out", str(tmp_path / "out")]) == 2
    assert f"--boxes {box_csv}, line 4: w must be a positive number (found '0')" in \
        capsys.readouterr().err
