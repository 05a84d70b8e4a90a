"""Saliency figures leave matplotlib's backend alone; the report shows one progress bar."""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

from chestkd.saliency.report.figures import plot_saliency_grid  # noqa: E402

BACKEND_CHECK = """
import sys
import matplotlib
before = (matplotlib.get_backend(), matplotlib.rcParams["backend"])
import numpy as np
import chestkd.saliency, chestkd.saliency.report, chestkd.saliency.report.figures
import chestkd.saliency.__main__
from chestkd.saliency.report.figures import plot_saliency_grid
plot_saliency_grid(np.zeros((1, 8, 8, 3)), {"cam": np.ones((1, 8, 8))}, sys.argv[1])
after = (matplotlib.get_backend(), matplotlib.rcParams["backend"])
print(before == after, before, after)
"""


@pytest.mark.parametrize("backend", ["svg", "module://matplotlib_inline.backend_inline"])
def test_importing_and_drawing_keep_the_callers_backend(backend, tmp_path):
    env = {**os.environ, "MPLBACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", BACKEND_CHECK, str(tmp_path / "grid.png")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("True"), done.stdout
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_grid_is_drawn_without_pyplot(tmp_path):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    path = plot_saliency_grid(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)),
                              {"smoothgrad": np.zeros((2, 16, 16)),
                               "gradcam_plus_plus": np.ones((2, 16, 16))},
                              tmp_path / "grid.png", boxes=[[(2, 2, 4, 4)], []], title="t")
    assert os.path.getsize(path) > 1000
    assert plt.get_fignums() == open_before          # nothing left open in pyplot


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))


def test_report_maps_show_one_progress_bar_unless_quiet(model, tmp_path, capsys):
    from chestkd.saliency.report.writer import compute_maps

    images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    methods = ("vanilla", "smoothgrad", "cam", "scorecam")
    options = {"smoothgrad": {"samples": 2}, "scorecam": {"max_maps": 2}}
    maps, skipped = compute_maps(model, images, np.array([0, 1, 0]), methods, options,
                                 batch_size=2, verbose=1)
    assert not skipped and list(maps) == list(methods)
    out = capsys.readouterr().out
    assert "12/12" in out                                  # methods x images
    # Captured stdout is not a terminal: plain lines, at most one per 10 % (issue 15).
    assert "\r" not in out and "\x1b" not in out and out.count("\n") <= 10
    assert out.splitlines()[-1].startswith("saliency maps: 12/12 maps (100 %)")
    maps, _ = compute_maps(model, images, np.array([0, 1, 0]), methods, options,
                           batch_size=2, verbose=0)
    assert capsys.readouterr().out == ""
