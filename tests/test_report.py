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


def _base(seed=0, **options):
    return {**SETTING, "recipe": "base_training", "model": "resnet20", "seed": seed, **options}


def test_the_seeds_of_an_estimated_mean_std_are_one_setting(tmp_path):
    """Regression: with normalization=mean_std each seed estimates its own mean/std and saves
    it in config.yaml; the report keyed the setting on it, so --seeds 0,1 gave two tables of
    n=1. A mean_std the user set (explicit_options) still makes a setting of its own."""
    estimated = {"normalization": "mean_std", "explicit_options": ["normalization", "seed"]}
    _run(tmp_path, "base-s0", _base(0, mean_std=[0.49, 0.24], **estimated),
         {"model": "resnet20", "mean_auc": 0.70})
    _run(tmp_path, "base-s1", _base(1, mean_std=[0.51, 0.25], **estimated),
         {"model": "resnet20", "mean_auc": 0.80})
    # a run saved before explicit_options were recorded estimated its mean_std too
    older = _base(2, normalization="mean_std", mean_std=[0.50, 0.23])
    _run(tmp_path, "base-s2-older", older, {"model": "resnet20", "mean_auc": 0.90})
    _run(tmp_path, "base-given", _base(0, normalization="mean_std", mean_std=[0.5, 0.25],
                                       explicit_options=["mean_std", "normalization"]),
         {"model": "resnet20", "mean_auc": 0.60})
    table = table1(find_runs(tmp_path)).sort_values("n").reset_index(drop=True)
    assert list(table["n"]) == [1, 3]
    assert table["mean_auc"].iloc[0] == pytest.approx(0.60)
    assert table["mean_auc"].iloc[1] == pytest.approx(0.80)
    assert table["std"].iloc[1] == pytest.approx(0.1)


def _stages(folder, *names):
    (folder / "stages.json").write_text(json.dumps({n: {"finished": "today"} for n in names}))


def test_a_kd_run_stopped_before_its_final_metrics_is_not_finished(tmp_path):
    """Regression: a KD or self-training run killed after its evaluation stage (metrics.json
    of the scores alone) but before its final metrics.json (teacher agreement, comparison,
    saliency) was counted, as a column 'teacher None; None', and table1 never finished it.
    A run written before the results stage existed counts by its final metrics.json."""
    from chestkd.experiments.table_cells import finished
    from chestkd.training.config import config_id
    configs = {"kd-stopped": _kd(seed=1), "self-stopped": _self(seed=1), "kd-legacy": _kd(),
               "self-marked": _self()}
    scores = {"mean_auc": 0.5}   # evaluate_once's metrics.json: the scores alone
    metrics = {"kd-stopped": scores, "self-stopped": scores,
               "kd-legacy": {**KD_METRICS, "strategy": "standard_kd", "mean_auc": 0.7},
               "self-marked": {"strategy": "self_training", "mean_auc": 0.8}}
    stages = {"kd-stopped": ("training", "evaluation"),
              "self-stopped": ("base_evaluation", "training", "evaluation"),
              "kd-legacy": ("training", "evaluation"),
              "self-marked": ("base_evaluation", "training", "evaluation", "results")}
    for name, config in configs.items():
        folder = _run(tmp_path, name, {**config, "config_id": config_id(config)}, metrics[name])
        _stages(folder, *stages[name])
    runs = find_runs(tmp_path)
    assert sorted(runs["run"].map(lambda r: r.rsplit("/", 1)[-1])) == ["kd-legacy",
                                                                       "self-marked"]
    assert sorted(runs["mean_auc"]) == [0.7, 0.8]
    for name, config in configs.items():
        found = finished({**config, "out": str(tmp_path)})
        assert found == (tmp_path / name if name in ("kd-legacy", "self-marked") else None)


def test_write_final_metrics_marks_the_results_stage_once(tmp_path):
    """The final metrics.json marks stage results; a finished run resumed (this one, or one
    written before the stage existed) keeps its stages.json as it was."""
    from chestkd.experiments.kd import write_final_metrics
    from chestkd.training.run import run_finished
    run = _run(tmp_path, "kd", _kd(), {"model": "conv3_student", "mean_auc": 0.5})
    _stages(run, "training", "evaluation")
    assert not run_finished(run, "kd")
    write_final_metrics({**KD_METRICS, "strategy": "standard_kd", "mean_auc": 0.5}, run, "kd")
    stages = json.loads((run / "stages.json").read_text())
    assert list(stages) == ["training", "evaluation", "results"]
    assert run_finished(run, "kd")
    before = (run / "stages.json").read_text()
    write_final_metrics({**KD_METRICS, "strategy": "standard_kd", "mean_auc": 0.5}, run, "kd")
    assert (run / "stages.json").read_text() == before
    _stages(run, "training", "evaluation")   # a finished run of before the results stage
    write_final_metrics({**KD_METRICS, "strategy": "standard_kd", "mean_auc": 0.5}, run, "kd")
    assert list(json.loads((run / "stages.json").read_text())) == ["training", "evaluation"]


def test_table2_keeps_settings_and_models_apart(tmp_path):
    """Regression: Table 2 averaged training minutes per strategy over every setting, epoch
    count and model (1- and 3-epoch runs gave one mean)."""
    from chestkd.report import table2
    _run(tmp_path, "base-e2", _base(), {"model": "resnet20", "mean_auc": 0.7,
                                        "train_seconds": 60})
    _run(tmp_path, "base-e2-s1", _base(1), {"model": "resnet20", "mean_auc": 0.7,
                                            "train_seconds": 180})
    _run(tmp_path, "base-e6", _base(epochs=6), {"model": "resnet20", "mean_auc": 0.7,
                                                "train_seconds": 600})
    _run(tmp_path, "base-conv3", _base(model="conv3_student"),
         {"model": "conv3_student", "mean_auc": 0.7, "train_seconds": 6})
    table = table2(find_runs(tmp_path))
    assert len(table) == 3
    minutes = sorted(zip(table["model"], table["minutes (mean)"], table["runs"]))
    assert minutes == [("conv3_student", 0.1, 1), ("resnet20", 2.0, 2),
                       ("resnet20", 10.0, 1)]
    assert set(table.columns) >= {"setting", "dataset", "model", "strategy"}


@pytest.mark.parametrize("name, text", [("config.yaml", "- damaged\n"),
                                        ("metrics.json", "[0.5]"),
                                        ("metrics.json", '"text"')])
def test_a_run_file_that_is_no_mapping_is_named(tmp_path, name, text):
    """Regression: a config.yaml or metrics.json that parsed to a list or a string gave an
    AttributeError traceback."""
    _run(tmp_path, "base_training-resnet20", _base(), {"model": "resnet20", "mean_auc": 0.8})
    (tmp_path / "base_training-resnet20" / name).write_text(text)
    with pytest.raises(ChestKDError, match=rf"base_training-resnet20/{name}: not readable"):
        find_runs(tmp_path)


def test_kd_loss_left_to_the_data_and_the_same_loss_given_are_one_cell(tmp_path):
    """Regression: kd_loss unset (the data chose sigmoid) and --kd-loss sigmoid were two cells
    of one experiment; the run's resolved formulation (metrics.json) keys the cell."""
    _run(tmp_path, "kd-unset", _kd(kd_loss=None), {**KD_METRICS, "mean_auc": 0.70})
    _run(tmp_path, "kd-sigmoid", _kd(seed=1, kd_loss="sigmoid"),
         {**KD_METRICS, "mean_auc": 0.80})
    _run(tmp_path, "kd-hinton", _kd(kd_loss="hinton"),
         {**KD_METRICS, "kd_loss": "hinton", "mean_auc": 0.60})
    table = table1(find_runs(tmp_path)).sort_values("mean_auc").reset_index(drop=True)
    assert list(table["n"]) == [1, 2]
    assert list(table["mean_auc"]) == [pytest.approx(0.60), pytest.approx(0.75)]
