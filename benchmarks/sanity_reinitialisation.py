"""The cascade's verdicts under the old and the fixed re-initialisation (issue 15, defect 1).

Usage: ``python benchmarks/sanity_reinitialisation.py RUN_DIR`` where RUN_DIR is a finished
chestkd run (``config.yaml`` and ``model.keras``). Explains the first test image's predicted
class with the sanity report's methods and options (5 cascade steps) twice: with the layers
re-initialised as the cascade did before the fix (a clone drawn after
``keras.utils.set_random_seed(0)``, which repeats the initial weights of a model chestkd built
after the same call) and as it does now
(:func:`chestkd.saliency.analysis.sanity.reinitialised_clone`).
"""
import argparse
from pathlib import Path

import keras
import numpy as np
import yaml

from chestkd.saliency.analysis.sanity import (FAIL_SPEARMAN, parameter_randomisation,
                                              reinitialised_clone, top_half_spearman)
from chestkd.training.classifier import image_options, load_run_data, make_dataset

METHODS = ("vanilla", "guided_backprop", "integrated_gradients", "gradcam")
OPTIONS = {"integrated_gradients": {"steps": 8}}      # the report's SANITY_OPTIONS


def main(run_dir):
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = load_run_data(config, run_dir)
    test = make_dataset(data, "test", batch_size=4, training=False,
                        **image_options(data, config))
    images, _ = next(iter(test))
    images = np.asarray(images["image"] if isinstance(images, dict) else images)[:1]
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    explained = int(np.argmax(model(images, training=False)[0]))
    keras.utils.set_random_seed(0)
    donors = {"old": keras.models.clone_model(model), "fixed": reinitialised_clone(model, 0)}
    print("| method | top layer random: Spearman, old / fixed | top half random: mean "
          "Spearman, old / fixed | all random, old / fixed | verdict, old / fixed |")
    print("|---|---|---|---|---|")
    for method in METHODS:
        cells = {}
        for tag, donor in donors.items():
            entries = parameter_randomisation(model, images, explained, method, max_steps=5,
                                              reinitialised=donor, **OPTIONS.get(method, {}))
            half = top_half_spearman(entries)
            cells[tag] = (entries[0]["spearman"], half, entries[-1]["spearman"],
                          "FAILS" if half >= FAIL_SPEARMAN else "passes")
        old, new = cells["old"], cells["fixed"]
        print(f"| {method} | {old[0]:.3f} / {new[0]:.3f} | {old[1]:.3f} / {new[1]:.3f} | "
              f"{old[2]:.3f} / {new[2]:.3f} | {old[3]} / {new[3]} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a finished chestkd run (config.yaml and model.keras)")
    main(parser.parse_args().run_dir)
