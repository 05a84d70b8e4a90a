"""The model store: one key holds one model, whatever order the runs that need it come in."""
from pathlib import Path

import numpy as np
import pytest

from chestkd.experiments.store import obtain_model
from chestkd.training.classifier import prepare_run_data
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, resolve_config
from chestkd.training.options import run_options


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from chestkd.data.phantom import write_phantom
    return write_phantom(tmp_path_factory.mktemp("phantom") / "data", images=48, size=32,
                         seed=3)


def _store(phantom, folder, *options):
    config = resolve_config(
        ["--dataset", "chestxray14", "--data-dir", str(phantom), "split=patient",
         "--image-size", "32", "--batch-size", "16", "--epochs", "2", "--schedule", "constant",
         "learning_rate=0.01", "checkpoint=last", "bootstrap=0", "latency_images=1",
         "jit_compile=false", f"teachers_dir={folder / 'store'}", *options],
        {**BASE_DEFAULTS, **KD_DEFAULTS})
    (folder / "run").mkdir(parents=True)
    data, options = prepare_run_data(run_options(config), folder / "run")
    return lambda **kwargs: obtain_model(options, data, "conv3_student", **kwargs)


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_a_defective_checkpoint_first_leaves_the_full_model_as_trained_straight(phantom,
                                                                                tmp_path):
    # Regression: the checkpoint was trained inside the store's entry, which a later run
    # continued to the full schedule: with another data order than straight training, and
    # with `checkpoint: last` the entry could keep the checkpoint's epoch as "the" model.
    straight, _ = _store(phantom, tmp_path / "a")()
    first = _store(phantom, tmp_path / "b")
    _, source = first(snapshot=1)
    full, entry = first()
    assert _same_weights(full, straight)
    assert source.parent.parent.name == f"{entry.name}-until1"  # a copy of its own


def test_an_earlier_checkpoint_after_a_later_one(phantom, tmp_path):
    # Regression: defective_fraction 0.5 then 0.25 on one teacher failed with
    # "snapshots/epoch-0001.keras: model file not found".
    # (a run's own checkpoint, defective_fraction 1.0 here, is the only other one kept)
    store = _store(phantom, tmp_path / "c", "--epochs", "3", "defective_fraction=1.0")
    later, _ = store(snapshot=2)
    earlier, source = store(snapshot=1)
    assert source.name == "epoch-0001.keras"
    reference, _ = _store(phantom, tmp_path / "d", "--epochs", "3")(snapshot=1)
    assert _same_weights(earlier, reference) and not _same_weights(earlier, later)


def test_a_run_with_other_bootstrap_resamples_scores_the_stored_model_anew(phantom, tmp_path):
    # Regression: the entry's key leaves the bootstrap out, and its metrics.json (intervals
    # of the first run's resamples) was copied into a run that asked for bootstrap=0.
    import json

    from chestkd.recipes import base_training
    argv = ["--dataset", "chestxray14", "--data-dir", str(phantom), "split=patient",
            "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--model",
            "conv3_student", "--out", str(tmp_path), "latency_images=1", "jit_compile=false"]
    first = base_training.run([*argv, "bootstrap=40"])
    again = base_training.run([*argv, "bootstrap=0"])
    assert again["trained_in"] == first["trained_in"]          # the same model, not retrained
    assert first["bootstrap"]["resamples"] == 40 and "mean_auc_ci" in first
    assert "bootstrap" not in again and "mean_auc_ci" not in again
    assert again["mean_auc"] == first["mean_auc"]
    saved = json.loads((Path(again["run_dir"]) / "metrics.json").read_text())
    assert "bootstrap" not in saved and saved["trained_in"] == first["trained_in"]


def test_a_copy_killed_half_way_leaves_nothing_that_a_resumed_run_keeps(tmp_path, monkeypatch):
    # copy_results skips a file that exists: a plain copy2 killed half-way left a truncated
    # base_test_predictions.npz (or model.keras) that every resume then kept.
    import shutil

    from chestkd.experiments.store import copy_results
    source, run_dir = tmp_path / "entry", tmp_path / "run"
    source.mkdir()
    run_dir.mkdir()
    content = bytes(range(256)) * 40
    (source / "test_predictions.npz").write_bytes(content)
    (source / "metrics.json").write_text('{"mean_auc": 0.5}')
    real_copy = shutil.copy2

    def killed(src, dst, *args, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt   # what SIGINT raises mid-copy
    monkeypatch.setattr(shutil, "copy2", killed)
    with pytest.raises(KeyboardInterrupt):
        copy_results(source, run_dir, prefix="base_", names=("test_predictions.npz",))
    monkeypatch.setattr(shutil, "copy2", real_copy)
    copy_results(source, run_dir, prefix="base_", names=("test_predictions.npz",))
    assert (run_dir / "base_test_predictions.npz").read_bytes() == content
    assert sorted(p.name for p in run_dir.iterdir()) == ["base_test_predictions.npz"]


def test_a_store_entry_is_not_resumed_as_a_run(tmp_path):
    # It was: the entry trained again into entry/teachers/<entry> and its metrics.json was
    # rewritten.
    import yaml

    from chestkd.errors import ConfigError
    from chestkd.training.run import open_run
    entry = tmp_path / "teachers" / "resnet20-e2-938a9b24cd"
    entry.mkdir(parents=True)
    (entry / "config.yaml").write_text(yaml.safe_dump(
        {**BASE_DEFAULTS, "recipe": "base_training", "role": "store"}))
    config = resolve_config(["--resume", str(entry)], BASE_DEFAULTS)
    with pytest.raises(ConfigError, match="a model-store entry, not a run"):
        open_run(run_options(config), "base_training")
    assert not (entry / "teachers").exists()


def test_a_damaged_model_or_teacher_table_is_named(tmp_path):
    # Keras said "File not found: ... Please ensure the file is an accessible .keras zip file"
    # of a truncated model, and np.load "Failed to read all data" of a truncated table,
    # both as tracebacks.
    from chestkd.cli import user_error_message
    from chestkd.training.run import load_model
    from chestkd.training.teacher_cache import load_or_compute
    model = tmp_path / "model.keras"
    model.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(Exception) as caught:
        load_model(model)
    assert user_error_message(caught.value) == (
        f"{model}: not a readable Keras model (ValueError); a damaged model-store entry is "
        "trained again once its folder is deleted")
    table = tmp_path / "teacher_logits_train.npy"
    np.save(table, np.zeros((10, 2, 3), np.float32))
    table.write_bytes(table.read_bytes()[:100])
    with pytest.raises(Exception) as caught:
        load_or_compute(table, None, None)
    message = user_error_message(caught.value)
    assert message.startswith(f"{table}: unreadable cached teacher logits") and \
        message.endswith("delete the file and run again to compute them anew")
