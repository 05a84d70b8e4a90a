"""A tiny finished run for the predict and export tests: a 60-image, 32-pixel phantom read
as ChestX-ray14, an untrained conv3_student saved as model.keras, and its evaluation
(model_info.json with thresholds chosen on the validation split). No training: these tests
check that files, not fits, agree."""
from chestkd.data.phantom import write_phantom
from chestkd.evaluation import evaluate_model
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.experiment import build_model, load_run_data
from chestkd.training.run import save_model_atomically, start_run

SIZE = 32


def tiny_run(folder, model="conv3_student"):
    """(run directory, dataset) of a finished tiny run in ``folder``."""
    phantom = write_phantom(folder / "phantom", images=60, size=SIZE, seed=1)
    config = resolve_config(["--dataset", "chestxray14", "--data-dir", str(phantom),
                             "--image-size", str(SIZE), "--batch-size", "16", "--model", model,
                             "--out", str(folder / "runs"), "split=patient", "bootstrap=0",
                             "latency_images=2", "jit_compile=false"], BASE_DEFAULTS)
    run_dir = start_run(config, "base_training")
    data = load_run_data(config, run_dir)
    network = build_model(model, data, config)
    save_model_atomically(network, run_dir / "model.keras")
    evaluate_model(network, data, config, run_dir)
    return run_dir, data
