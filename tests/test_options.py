"""The run's typed options (chestkd.training.options): made once at a recipe's edge, frozen,
checked with the option named, and never written into by the library."""
import ast
import json
import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

from chestkd.errors import ConfigError
from chestkd.experiments.kd import kd_experiment
from chestkd.recipes import base_training, self_training
from chestkd.training.classifier import prepare_run_data
from chestkd.training.config import BASE_DEFAULTS, config_id, resolve_config
from chestkd.training.options import as_options, as_training, run_options
from chestkd.training.run import open_run, start_run

TINY = ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "phantom_images=60",
        "phantom_size=64", "--bootstrap", "0"]


def test_typed_parts_read_the_resolved_configuration(tmp_path):
    config = resolve_config([*TINY, "--out", str(tmp_path)], self_training.DEFAULTS,
                            recipe_profiles=self_training.RECIPE_PROFILES)
    options = run_options(config)
    assert (options.training.model, options.training.epochs, options.training.batch_size) \
        == ("resnet20", 1, 8)
    assert options.image.pipeline() == {"image_size": 32, "normalization": "minus_one_one",
                                        "mean_std": None, "cache_dir": None}
    assert (options.kd.temperature, options.kd.alpha, options.kd.student_init) == (4.0, 0.5,
                                                                                  "fresh")
    assert options.evaluation.bootstrap == 0 and options.seed == 0
    assert dict(options.config) == config   # the record itself, a copy
    config["epochs"] = 99
    assert options.config["epochs"] == 1 and options.training.epochs == 1


def test_options_are_frozen_and_replace_returns_new_ones():
    options = run_options({**BASE_DEFAULTS, "normalization": "mean_std"}, check=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.training.epochs = 3
    with pytest.raises(TypeError):
        options.config["epochs"] = 3          # a read-only view of the configuration
    settled = options.replace(mean_std=[0.5, 0.25])
    assert settled.image.mean_std == (0.5, 0.25) and settled.config["mean_std"] == [0.5, 0.25]
    assert options.image.mean_std is None and options.config["mean_std"] is None


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "many", "--epochs 'many'"),
    ("optimizer", "lbfgs", "--optimizer 'lbfgs'"),
    ("normalization", "scaled", "--normalization 'scaled'"),
    # Used to pass: -5 resamples turned the intervals off and wrote n_boot -5; no latency
    # timing wrote a NaN latency into metrics.json after training.
    ("bootstrap", -5, "--bootstrap -5: expected an integer >= 0"),
    ("bootstrap", 20, "--bootstrap 20: expected 0 \\(off\\) or at least 40 resamples"),
    ("latency_images", 0, "--latency-images 0: expected an integer >= 1"),
])
def test_a_bad_value_is_named_before_anything_runs(key, value, message):
    with pytest.raises(ConfigError, match=message):
        run_options({**BASE_DEFAULTS, key: value})
    if key == "epochs":  # unchecked (a notebook's dict), the typed field still names it
        with pytest.raises(ConfigError, match="--epochs 'many': expected an integer"):
            as_options({key: value})
        with pytest.raises(ConfigError, match="--epochs 2.7: expected an integer"):
            as_options({key: 2.7})    # never truncated to 2
        assert as_options({key: "3"}).training.epochs == 3


def test_a_partial_dict_takes_the_defaults_in_its_typed_fields_only():
    options = as_options({"epochs": 3})
    assert options.training.epochs == 3
    assert options.training.optimizer == BASE_DEFAULTS["optimizer"]
    assert options.kd.kd_loss is None and options.kd.teacher_outputs == "cached"
    assert dict(options.config) == {"epochs": 3}
    assert as_options(options) is options and as_training(options) is options.training


def test_open_run_saves_the_configuration_as_runs_always_saved_it(tmp_path):
    """config.yaml is the resolved configuration (no runtime ``_`` keys) with the recipe, then
    config_id and run_dir appended, byte for byte as chestkd has always written it, so runs,
    table cells and store entries made before the options existed are still found; now
    ``explicit_options`` (bookkeeping: the keys the user set, for a resume before the
    data chose a profile) stands between config_id and run_dir."""
    argv = [*TINY, "--out", str(tmp_path)]
    resolved = resolve_config(argv, self_training.DEFAULTS)
    run_dir, options = open_run(run_options(resolved), "self_training")
    expected = {k: v for k, v in resolved.items() if not k.startswith("_")}
    expected["recipe"] = "self_training"
    expected["config_id"] = config_id({k: v for k, v in resolved.items()
                                       if not k.startswith("_")} | {"recipe": "self_training"})
    expected["explicit_options"] = resolved["_explicit"]
    expected["run_dir"] = str(run_dir)
    assert (run_dir / "config.yaml").read_text() == yaml.safe_dump(expected, sort_keys=False)
    assert dict(options.config) == {**resolved, **expected}
    legacy = resolve_config(argv, self_training.DEFAULTS)
    legacy_dir = start_run(legacy, "self_training")  # the adapter for a dict
    assert legacy["config_id"] == expected["config_id"] and legacy["run_dir"] == str(legacy_dir)


def test_prepare_run_data_returns_what_the_data_settled_and_records_it(tmp_path):
    argv = [*TINY, "--out", str(tmp_path), "--normalization", "mean_std"]
    given = run_options(resolve_config(argv, base_training.DEFAULTS))
    run_dir, given = open_run(given, "base_training")
    data, settled = prepare_run_data(given, run_dir)
    assert given.image.mean_std is None and given.config["mean_std"] is None  # untouched
    mean, std = settled.image.mean_std
    assert -1.0 < mean < 1.0 and 0.0 < std < 1.0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["mean_std"] == [mean, std]
    assert len(data.subset("train"))


@pytest.mark.parametrize("run_once", [self_training.run_once, base_training.run_once,
                                      kd_experiment])
def test_the_configuration_stops_at_the_edge(run_once):
    """``run_once`` turns the dict into options first and hands no dict to the library: the
    name ``config`` occurs once, as the argument of ``run_options``."""
    tree = ast.parse(inspect.getsource(run_once))
    uses = [node for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "config"]
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "run_options"]
    assert len(uses) == 1 and len(calls) == 1 and calls[0].args[0] is uses[0]


def test_the_library_writes_nothing_into_a_configuration():
    """No function of the library or of a recipe writes into a ``config`` it was given
    (``config[...] =``, ``config.update`` ...), save the parser and the two adapters for code
    that still carries a dict, which say so (and which no recipe or experiment calls)."""
    package = Path(self_training.__file__).resolve().parents[1]
    allowed = {("training/config.py", None), ("training/run.py", "start_run"),
               ("training/classifier.py", "load_run_data")}
    offences = []
    for layer in ("data", "training", "distill", "evaluation", "saliency", "robustness",
                  "experiments", "recipes"):
        for path in (package / layer).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
                if "config" not in [a.arg for a in function.args.args + function.args.kwonlyargs]:
                    continue
                for node in ast.walk(function):
                    target = (node.targets[0] if isinstance(node, ast.Assign) else
                              node.func.value if isinstance(node, ast.Call)
                              and isinstance(node.func, ast.Attribute)
                              and node.func.attr in ("update", "pop", "setdefault", "clear")
                              else None)
                    if isinstance(target, ast.Subscript):
                        target = target.value
                    if isinstance(target, ast.Name) and target.id == "config":
                        where = str(path.relative_to(package))
                        if (where, None) not in allowed and (where, function.name) not in allowed:
                            offences.append(f"{where}:{node.lineno} in {function.name}")
    for layer in ("experiments", "recipes"):
        for path in (package / layer).rglob("*.py"):
            offences += [f"{path.relative_to(package)}:{node.lineno} calls {node.func.id}"
                         for node in ast.walk(ast.parse(path.read_text()))
                         if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                         and node.func.id in ("start_run", "load_run_data")]
    assert not offences, offences


def test_the_configuration_pages_example_runs(tmp_path, monkeypatch):
    """docs/configuration.md's code block, on a tiny phantom in a fresh folder."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    tiny = '["--epochs", "1", "phantom_images=60", "--image-size", "32", "phantom_size=64"]'
    assert '["--epochs", "3"]' in block
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block.replace('["--epochs", "3"]', tiny), namespace)
    options, run_dir = namespace["options"], namespace["run_dir"]
    assert options.training.epochs == 1 and options.image.image_size == 32
    assert (run_dir / "config.yaml").is_file() and options.config["recipe"] == "base_training"


def test_a_repeat_over_seeds_lists_each_seeds_run(tmp_path):
    """The runs no longer write their folder into a shared dict: each run returns it."""
    summary = base_training.run([*TINY, "--seeds", "0,1", "--out", str(tmp_path),
                                 "--model", "conv3_student", "latency_images=2"])
    runs = [Path(run) for run in summary["runs"]]
    assert len(runs) == 2 and all((run / "metrics.json").is_file() for run in runs)
    assert [yaml.safe_load((run / "config.yaml").read_text())["seed"] for run in runs] == [0, 1]
    aucs = [json.loads((run / "metrics.json").read_text())["mean_auc"] for run in runs]
    assert summary["mean_auc"]["values"] == pytest.approx(aucs)
    text = (Path(summary["summary_dir"]) / "summary.md").read_text()
    assert all(f"- seed {s}: {run}" in text for s, run in zip((0, 1), runs))


@pytest.mark.parametrize("name", ["ensemble_kd", "assistant_kd", "ros_kd", "transfer_learning"])
def test_every_recipe_runs_once_per_seed(name, monkeypatch, capsys):
    """Regression: these recipes accepted --seeds and ran once, with seed 0. Each is now a
    recipe_entry: its plan first, then one run per seed."""
    import importlib
    recipe = importlib.import_module(f"chestkd.recipes.{name}")

    class Started(Exception):
        pass

    def start_run(config, recipe_name):
        raise Started(dict(config))

    def open_run(options, recipe_name):
        raise Started(dict(options.config))

    if hasattr(recipe, "open_run"):
        monkeypatch.setattr(recipe, "open_run", open_run)
    else:
        monkeypatch.setattr(recipe, "start_run", start_run)
    with pytest.raises(Started) as started:
        recipe.run(["--seeds", "3,4"])
    first = started.value.args[0]
    assert (first["seed"], first["seeds"]) == (3, None)
    printed = capsys.readouterr().out
    assert "plan" in printed.lower() or "trains, in order" in printed
    assert "=== seed 3 (1 of 2) ===" in printed


def test_a_repeat_of_a_recipe_with_its_own_tables_is_named_and_lists_its_runs(tmp_path):
    from chestkd.experiments.repeat import over_seeds
    config = {**BASE_DEFAULTS, "seeds": "3,4", "out": str(tmp_path)}
    summary = over_seeds(lambda one: {"recipe": "ensemble_kd",
                                      "run_dir": f"runs/seed{one['seed']}"}, config)
    folder = Path(summary["summary_dir"])
    assert folder.name.startswith("ensemble_kd-seeds-") and summary["runs"] == [
        "runs/seed3", "runs/seed4"]
    text = (folder / "summary.md").read_text()
    assert "Nothing to average" in text and "- seed 4: runs/seed4" in text


def test_a_repeat_averages_a_recipes_own_tables_row_by_row(tmp_path):
    """ensemble_kd, assistant_kd, ros_kd and transfer_learning report tables of their own:
    a repeat gives each cell's mean and sample std over the seeds, row by row (float64
    reference: numpy), keeps what every seed shares and leaves out what names one seed's run."""
    from chestkd.experiments.repeat import over_seeds
    aucs = {3: (0.61, 0.72), 4: (0.65, 0.70), 5: (0.60, 0.77)}

    def run_one(one):
        seed = one["seed"]
        rows = [{"model": name, "params": 1000 + k, "auc": aucs[seed][k],
                 "standard KD": None, "folder": f"runs/seed{seed}/{name}", "seed": seed}
                for k, name in enumerate(("teacher", "student"))]
        return {"recipe": "ensemble_kd", "table1": rows, "other": [{"model": f"m{seed}"}],
                "run_dir": f"runs/seed{seed}"}

    summary = over_seeds(run_one, {**BASE_DEFAULTS, "seeds": "3,4,5", "out": str(tmp_path)})
    rows = summary["tables"]["table1"]
    assert [r["model"] for r in rows] == ["teacher", "student"]
    for k, row in enumerate(rows):
        values = [aucs[s][k] for s in (3, 4, 5)]
        assert row["auc"]["values"] == values
        assert row["auc"]["mean"] == pytest.approx(np.mean(values), abs=1e-15)
        assert row["auc"]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
        assert row["params"] == 1000 + k and row["standard KD"] is None
        assert "folder" not in row and "seed" not in row
    assert "other" not in summary["tables"]          # its rows differ between seeds
    text = (Path(summary["summary_dir"]) / "summary.md").read_text()
    assert "## table1: mean +- std over the seeds" in text
    assert f"| teacher | 1000 | {np.mean([0.61, 0.65, 0.60]):.4f} +- " in text


def test_a_resumed_run_prints_no_plan_of_the_command_lines_defaults(monkeypatch, capsys,
                                                                     tmp_path):
    """Regression: --resume printed the plan of the command line's configuration (the
    defaults: e.g. the phantom profile's epochs), not the saved one that the run goes on with."""
    from chestkd.recipes import ensemble_kd

    class Started(Exception):
        pass

    def open_run(options, recipe_name):
        raise Started(dict(options.config))

    monkeypatch.setattr(ensemble_kd, "open_run", open_run)
    for argv, planned in (([], True), (["--resume", str(tmp_path)], False)):
        with pytest.raises(Started):
            ensemble_kd.run(argv)
        assert ("ensemble_kd plan" in capsys.readouterr().out) is planned, argv


def test_the_fewest_resamples_agree_with_the_statistics():
    from chestkd.evaluation.statistics import min_resamples
    from chestkd.training.options import MIN_BOOTSTRAP
    assert MIN_BOOTSTRAP == min_resamples(0.95) == 40
