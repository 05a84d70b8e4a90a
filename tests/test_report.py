"""The report's Table 1 from finished run folders (written here, no training): a cell is one
experiment, ``n`` counts its seeds, and only base models of the whole training split fill
the base column."""
import json

import pytest
import yaml

from chestkd.errors import ChestKDError

from chestkd.report import find_runs, table1, write_report
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS

SETTING = {**BASE_DEFAULTS, "image_size": 32, "epochs": 2, "batch_size": 16}


def _run(root, name, config, metrics):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps({"dataset": "phantom", **metrics}))
    return folder


def _kd(seed=0, **options):
    return {**SETTING, **KD_DEFAULTS, "recipe": "kd", "teacher": "resnet32",
            "student": "conv3_student", "seed": seed, **options}


def _self(seed=0, **options):
    return {**SETTING, "recipe": "self_training", "model": "resnet20", "kd_loss": "sigmoid",
            "teacher_outputs": "cached", "temperature": 4.0, "alpha": 0.5,
            "student_init": "fresh", "seed": seed, **options}


KD_METRICS = {"model": "conv3_student", "teacher": "resnet32", "kd_loss": "sigmoid"}


def test_a_cell_is_one_experiment_and_n_counts_its_seeds(tmp_path):
    _run(tmp_path, "kd-teacher5", _kd(teacher_epochs=5), {**KD_METRICS, "mean_auc": 0.60})
    _run(tmp_path, "kd-teacher200", _kd(teacher_epochs=200), {**KD_METRICS, "mean_auc": 0.90})
    # cached and online teachers give the same losses: one experiment, and one seed
    _run(tmp_path, "kd-cached", _kd(), {**KD_METRICS, "mean_auc": 0.71})
    _run(tmp_path, "kd-online", _kd(teacher_outputs="online"), {**KD_METRICS, "mean_auc": 0.75})
    _run(tmp_path, "kd-seed1", _kd(seed=1), {**KD_METRICS, "mean_auc": 0.79})
    _run(tmp_path, "self-fresh", _self(), {"model": "resnet20", "mean_auc": 0.70})
    _run(tmp_path, "self-teacher", _self(student_init="teacher"),
         {"model": "resnet20", "mean_auc": 0.80})
    table = table1(find_runs(tmp_path))

    def cell(told):
        return table[table["column"].str.contains(told, regex=False)].iloc[0]

    assert len(table) == 5
    assert (cell("teacher_epochs=5]").mean_auc, cell("teacher_epochs=5]").n) == (0.60, 1)
    assert (cell("teacher_epochs=200]").mean_auc, cell("teacher_epochs=200]").n) == (0.90, 1)
    plain = cell("teacher_epochs=None]")
    # seed 0 is the mean of its cached and online runs, then seeds 0 and 1 are averaged
    assert (plain.n, plain.runs) == (2, 3)
    assert plain.mean_auc == pytest.approx((0.73 + 0.79) / 2)
    assert plain["std"] == pytest.approx(abs(0.79 - 0.73) / 2 ** 0.5)
    assert (cell("student_init=fresh]").mean_auc, cell("student_init=fresh]").n) == (0.70, 1)
    assert (cell("student_init=teacher]").mean_auc, cell("student_init=teacher]").n) == (0.80, 1)


def _store_entry(root, place, seed=0, mean_auc=0.8):
    entry = {k: v for k, v in SETTING.items() if k not in ("recipe", "resume", "seeds")}
    config = {**entry, "recipe": "base_training", "model": "conv3_student", "seed": seed,
              "role": "store", "teachers_dir": str(root / place.rsplit("/", 1)[0])}
    return _run(root, place, config, {"model": "conv3_student", "mean_auc": mean_auc})


def test_the_base_column_counts_each_store_entry_once_and_no_subset_teacher(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    _store_entry(runs, "teachers/conv3_student-e2-0123456789", mean_auc=0.8)
    # a base-training run started with --out runs (relative) names the entry it reused
    _run(runs, "base_training-conv3_student", {**SETTING, "recipe": "base_training",
                                               "model": "conv3_student", "seed": 0},
         {"model": "conv3_student", "mean_auc": 0.8,
          "trained_in": "runs/teachers/conv3_student-e2-0123456789"})
    # a RoS-KD teacher trained on one overlapping subset of the training split
    _store_entry(runs, "teachers/ros_kd/k3-p0.4-core-s0-1/conv3_student-e2-0123456789",
                 mean_auc=0.6)
    for root in (tmp_path / "runs", "runs"):  # absolute, or as typed: the same cell
        table = table1(find_runs(root))
        assert list(table["column"]) == ["base_training"]
        assert (table["n"].iloc[0], table["mean_auc"].iloc[0]) == (1, 0.8)
        assert table["runs"].iloc[0] == 1


def test_runs_of_recipes_with_tables_of_their_own_are_left_out_and_named(tmp_path, capsys):
    _run(tmp_path, "base_training-resnet20", {**SETTING, "recipe": "base_training",
                                              "model": "resnet20", "seed": 0},
         {"model": "resnet20", "mean_auc": 0.8})
    _run(tmp_path, "ensemble_kd-resnet20", {**SETTING, "recipe": "ensemble_kd", "seed": 0},
         {"table1": []})
    written = write_report(tmp_path)
    assert "table1" in written
    assert "1 ensemble_kd run(s)" in capsys.readouterr().out


def test_a_damaged_run_file_is_named(tmp_path):
    _run(tmp_path, "base_training-resnet20", {**SETTING, "recipe": "base_training",
                                              "model": "resnet20", "seed": 0},
         {"model": "resnet20", "mean_auc": 0.8})
    (tmp_path / "base_training-resnet20" / "metrics.json").write_text('{"mean_auc": 0.5,')
    with pytest.raises(ChestKDError, match=r"base_training-resnet20/metrics.json: not readable"):
        find_runs(tmp_path)
