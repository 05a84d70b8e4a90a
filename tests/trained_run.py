"""A tiny *trained* run for the export tests: a separable synthetic two-class folder set
(grey 32 px images, a bright blob above or below the centre -- not left or right, which
the training flips would swap -- with noise and blob positions
that overlap a little, so the trained model is good but not perfect), a conv3_student fitted
for a few epochs, saved as model.keras and evaluated by the run's own pipeline (config.yaml,
model_info.json with validation thresholds, test_predictions.npz). Quantisation changes are
only meaningful on a model whose outputs depend on its input: an untrained network's
probabilities hardly move."""
import cv2
import keras
import numpy as np

from chestkd.training.options import as_options
from chestkd.data.pipeline import make_dataset
from chestkd.evaluation import evaluate_model
from chestkd.models.weights import save_model_atomically
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.classifier import build_model, image_options, load_run_data
from chestkd.training.run import start_run

SIZE = 32
CLASSES = ("upper", "lower")


def write_blobs(folder, images_per_class: int = 80, seed: int = 0):
    """``folder/upper/*.png`` and ``folder/lower/*.png``: a blob above or below centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(images_per_class):
            centre_y = rng.normal(SIZE * (0.38 if label == 0 else 0.62), SIZE * 0.1)
            centre_x = rng.uniform(SIZE * 0.3, SIZE * 0.7)
            blob = np.exp(-((xx - centre_x) ** 2 + (yy - centre_y) ** 2) / (2 * 4.0 ** 2))
            image = 0.25 + 0.5 * blob + rng.normal(0, 0.08, blob.shape)
            cv2.imwrite(str(folder / name / f"{name}{k:03d}.png"),
                        np.clip(image * 255, 0, 255).astype(np.uint8))
    return folder


def trained_run(folder, epochs: int = 6):
    """(run directory, dataset) of a finished, trained tiny run in ``folder``."""
    data_dir = write_blobs(folder / "blobs")
    config = resolve_config(["--dataset", "folder", "--data-dir", str(data_dir),
                             "--image-size", str(SIZE), "--batch-size", "16",
                             "--model", "conv3_student", "--out", str(folder / "runs"),
                             "bootstrap=0", "latency_images=2", "jit_compile=false"],
                            BASE_DEFAULTS)
    run_dir = start_run(config, "base_training")
    data = load_run_data(config, run_dir)
    keras.utils.set_random_seed(0)
    model = build_model("conv3_student", data, config)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(make_dataset(data, "train", training=True, seed=0, batch_size=16,
                           **image_options(data, config)), epochs=epochs, verbose=0)
    save_model_atomically(model, run_dir / "model.keras")
    evaluate_model(model, data, as_options(config), run_dir)
    return run_dir, data
