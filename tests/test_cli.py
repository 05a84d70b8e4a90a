"""Every installed console script: exit 0 on success, 2 on a user error (never 1 on success)."""
import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def _scripts():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


def _run(*argv, cwd=ROOT):
    executable = shutil.which(argv[0])
    if executable is None:
        pytest.fail(f"{argv[0]} is not installed: run pip install -e . (setup.cfg lists it)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([executable, *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_every_python_m_command_has_a_console_script():
    assert set(_scripts()) == {
        "chestkd-data", "chestkd-train", "chestkd-kd", "chestkd-standard-kd",
        "chestkd-reversed-kd", "chestkd-defective-kd", "chestkd-self-training",
        "chestkd-table1", "chestkd-saliency", "chestkd-report", "chestkd-ensemble-kd",
        "chestkd-assistant-kd", "chestkd-ros-kd", "chestkd-robustness", "chestkd-landscape",
        "chestkd-transfer-learning", "chestkd-predict", "chestkd-export",
        "chestkd-saliency-labels"}


def _entry_point(script):
    from importlib.metadata import entry_points
    found = [ep for ep in entry_points(group="console_scripts") if ep.name == script]
    if not found:
        pytest.fail(f"{script} is not installed: run pip install -e . (setup.cfg lists it)")
    return found[0].load()


@pytest.mark.parametrize("script", _scripts())
def test_each_installed_script_runs_its_command(script, capsys):
    main = _entry_point(script)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("argv, message", [
    (["chestkd-train", "epochz=3"], "epochz"),
    (["chestkd-kd", "--strategy", "sideways"], "strategy"),
    (["chestkd-self-training", "--kd-loss", "l2"], "kd-loss"),
    (["chestkd-report", "/no/such/runs"], "/no/such/runs"),
    (["chestkd-table1", "--recipes", "/no/such/folder"], "/no/such/folder"),
    (["chestkd-data", "describe", "--dataset", "chestxray14", "--data-dir", "/no/such"],
     "/no/such"),
    (["chestkd-ensemble-kd", "branches=[resnet32, no_such_net]"], "no_such_net"),
    (["chestkd-assistant-kd", "chain=[resnet32, no_such_net]"], "no_such_net"),
    (["chestkd-ros-kd", "--overlap", "1.5"], "overlap"),
    (["chestkd-robustness", "/no/such/run"], "/no/such/run"),
    (["chestkd-landscape", "/no/such/run"], "/no/such/run"),
    (["chestkd-transfer-learning", "epochz=1"], "epochz"),
    (["chestkd-predict", "/no/such/model.keras", "x.png", "--out", "/tmp/p"], "/no/such/model"),
    (["chestkd-export", "/no/such/run", "--format", "tflite"], "/no/such/run"),
    # numbers: refused before any work, named as the flag (it was a bare traceback, after
    # a whole base training for self-training's temperature)
    (["chestkd-train", "learning_rate=fast"], "--learning-rate 'fast': expected a number"),
    (["chestkd-kd", "temperature=abc"], "--temperature"),
    (["chestkd-kd", "alpha=1.5"], "--alpha 1.5: expected a number >= 0 and <= 1"),
    (["chestkd-kd", "teacher_epochs=abc"], "--teacher-epochs"),
    (["chestkd-kd", "--strategy", "defective", "defective_fraction=2"], "--defective-fraction"),
    (["chestkd-self-training", "temperature=abc"], "--temperature"),
    (["chestkd-ensemble-kd", "feature_weight=abc"], "--feature-weight"),
    (["chestkd-ros-kd", "averaging_start=abc"], "--averaging-start"),
    (["chestkd-transfer-learning", "paper_alpha=abc"], "--paper-alpha"),
    (["chestkd-robustness", "/no/such/run", "--steps", "0"], "--steps 0"),
    (["chestkd-robustness", "/no/such/run", "--max-images", "0"], "--max-images 0"),
    (["chestkd-train", "schedule=step", "step_epochs=[a]"], "--step-epochs"),
    (["chestkd-train", "skip_bad_images=flase"], "--skip-bad-images 'flase': expected true"),
    (["chestkd-train", "normalization=mean_std", "mean_std=[a, 0.2]"], "--mean-std 'a'"),
    # one resumed run is no repeat over seeds (it was resumed once per seed, std 0)
    (["chestkd-kd", "--resume", "/no/such/run", "--seeds", "0,1"], "--seeds"),
])
def test_user_errors_exit_2(argv, message, capsys):
    main = _entry_point(argv[0])
    try:
        code = main(argv[1:])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_successful_run_exits_0(tmp_path):
    """The bug this guards: main() returned a dict, and sys.exit(dict) exits with status 1."""
    from chestkd.data.phantom import write_phantom
    data = write_phantom(tmp_path / "data", images=60, size=32, seed=2)
    result = _run("chestkd-train", "--dataset", "chestxray14", "--data-dir", str(data),
                  "--model", "conv3_student", "--image-size", "32", "--epochs", "1",
                  "--batch-size", "16", "--out", str(tmp_path / "runs"), "split=patient",
                  "latency_images=2", "bootstrap=40", "jit_compile=false")
    assert result.returncode == 0, result.stderr[-3000:]
    error = _run("chestkd-train", "--model", "resnet9000")
    assert error.returncode == 2 and "resnet9000" in error.stderr
    report = _run("chestkd-report", str(tmp_path / "runs"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "runs" / "report" / "table1.md").exists()
    describe = _run("chestkd-data", "describe", "--dataset", "chestxray14", "--data-dir",
                    str(DATA / "chestxray14"))
    assert describe.returncode == 0, describe.stderr[-2000:]


@pytest.mark.parametrize("argv", [
    ["chestkd-train", "--out", "{file}"],
    ["chestkd-data", "phantom", "--out", "{file}"],
    ["chestkd-data", "phantom", "--out", "{file}/phantom"],
])
def test_an_out_that_is_a_file_exits_2_naming_it(argv, tmp_path, capsys):
    # Regression: FileExistsError / NotADirectoryError tracebacks from mkdir (every command
    # makes its output folder with chestkd.cli.output_folder).
    taken = tmp_path / "typo.yaml"
    taken.write_text("not a folder\n")
    argv = [a.format(file=taken) for a in argv]
    main = _entry_point(argv[0])
    try:
        code = main(argv[1:])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(taken) in err and "Traceback" not in err


def test_a_user_error_raised_inside_a_tf_data_pipeline_exits_2(capsys):
    # Regression: tf.data wraps a DataError of its reader (an image that does not decode,
    # read with check_images: false) in an OpError, and the command ended in a traceback.
    import numpy as np
    import tensorflow as tf

    from chestkd.cli import cli_errors
    from chestkd.errors import DataError

    def read(index):
        raise DataError(f"bad image /x/{int(index)}.png: cannot decode image")

    pipeline = tf.data.Dataset.range(2).map(
        lambda i: tf.numpy_function(read, [i], tf.float32))
    with pytest.raises(SystemExit) as exit_info, cli_errors():
        list(pipeline)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: bad image /x/0.png: cannot decode image\n"

    def bug(index):
        raise ValueError("a bug keeps its traceback")

    with pytest.raises(tf.errors.OpError), cli_errors():
        list(tf.data.Dataset.range(1).map(lambda i: tf.numpy_function(bug, [i], np.float32)))
