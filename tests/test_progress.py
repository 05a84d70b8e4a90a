"""Progress reports in a log file: one plain line per 10 %, no redrawn bar (issue 15)."""
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chestkd.data.images import progress_bar  # noqa: E402
from chestkd.data.progress import LineProgress, progress  # noqa: E402


class Terminal(io.StringIO):
    def isatty(self):
        return True


def assert_plain_lines(text: str, expected_counts, total: int, unit: str):
    assert "\r" not in text and "\x1b" not in text and "\b" not in text
    lines = text.splitlines()
    assert [int(line.split(": ")[1].split("/")[0]) for line in lines] == expected_counts
    assert all(f"/{total} {unit}" in line for line in lines)


def test_a_log_gets_one_line_per_ten_percent_whatever_the_updates():
    stream = io.StringIO()
    bar = LineProgress(200, unit_name="image", label="checking images", stream=stream)
    for done in range(1, 201):
        bar.update(done)
    bar.update(200)                     # a repeated final update writes nothing more
    assert_plain_lines(stream.getvalue(), list(range(20, 201, 20)), 200, "images")
    assert stream.getvalue().splitlines()[-1].startswith("checking images: 200/200 images (100 %)")


def test_jumps_and_add_report_once_per_crossing():
    stream = io.StringIO()
    bar = LineProgress(1000, unit_name="map", stream=stream)
    bar.add(5)                          # 0.5 %: nothing yet
    bar.add(340)                        # crosses 10, 20 and 30 % at once: one line
    bar.update(999)
    bar.update(1000)
    assert_plain_lines(stream.getvalue(), [345, 999, 1000], 1000, "maps")


def test_progress_picks_the_bar_by_the_stream():
    assert isinstance(progress(10, stream=io.StringIO()), LineProgress)
    import keras
    assert isinstance(progress(10, stream=Terminal()), keras.utils.Progbar)


def test_progress_bar_in_a_captured_stdout_writes_lines(capsys):
    bar = progress_bar(50, 1, unit_name="image", minimum=0)
    for done in range(1, 51):
        bar.update(done)
    assert_plain_lines(capsys.readouterr().out, list(range(5, 51, 5)), 50, "images")
    assert progress_bar(50, 0) is None and progress_bar(5, 1, minimum=10) is None


def test_saliency_maps_progress_in_a_log(capsys):
    import keras
    from keras import layers

    from chestkd.saliency.report.writer import compute_maps
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3), layers.ReLU(),
                              layers.GlobalAveragePooling2D(), layers.Dense(2)])
    images = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
    capsys.readouterr()
    maps, skipped = compute_maps(model, images, np.zeros(5, int), ["vanilla", "gradcam"], {},
                                 batch_size=2)
    assert set(maps) == {"vanilla", "gradcam"} and not skipped
    text = capsys.readouterr().out
    counts = [int(line.split(": ")[1].split("/")[0]) for line in text.splitlines()]
    # Methods report after each batch of 2 images: at most one line per 10 %, ending at 10.
    assert counts == sorted(set(counts)) and counts[-1] == 10 and len(counts) <= 10
    assert_plain_lines(text, counts, 10, "maps")
    assert all(line.startswith("saliency maps: ") for line in text.splitlines())


def test_every_percent_is_checked():
    with pytest.raises(ValueError, match="every_percent"):
        LineProgress(10, every_percent=0)
