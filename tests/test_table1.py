"""The table runner: the paper's cells ship with the package and are found from any working
directory, it takes the recipes' own flags (--out, --epochs, ...), and a failing cell is
reported while the others run."""
import configparser
import json
from pathlib import Path
from types import SimpleNamespace

from chestkd.recipes import table1

ROOT = Path(__file__).resolve().parents[1]


def _main(argv):
    try:
        return table1.main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def test_the_papers_cells_are_found_from_any_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere"
    summary = table1.run(["--only", "*-resnet32.yaml", "--dry-run", "--out", str(out),
                          "--epochs", "2", "batch_size=8"])
    names = [cell["cell"] for cell in summary["cells"]]
    # base training, self-training, and standard/reversed/defective KD from both teachers
    assert sorted(names) == sorted(
        ["base_training-resnet32.yaml", "self_training-resnet32.yaml"]
        + [f"{s}_kd-{t}-resnet32.yaml" for s in ("standard", "reversed", "defective")
           for t in ("densenet121", "resnet152")])
    assert {cell["status"] for cell in summary["cells"]} == {"to run"}
    # the flags and key=value pairs reach every cell; the paper's settings stay the rest
    for cell in summary["cells"]:
        config = cell["config"]
        assert (config["out"], config["epochs"], config["batch_size"]) == (str(out), 2, 8)
        assert config["teachers_dir"] == str(out / "teachers")  # the store follows --out
        assert config["learning_rate"] == 0.1 and config["weight_decay"] == 0.0005
        assert Path(config["config_file"]).is_relative_to(table1.PAPER_CELLS)
    assert not out.exists()  # a dry run writes nothing
    assert capsys.readouterr().out.count("[run ]") == len(names)


def test_the_repository_folder_and_a_users_folder_still_work(tmp_path, monkeypatch):
    # the repository's recipes/table1 is the same files (a link into the package)
    cells = sorted(p.name for p in (ROOT / "recipes" / "table1").glob("*.yaml"))
    assert cells == sorted(p.name for p in table1.PAPER_CELLS.glob("*.yaml"))
    assert len(cells) == 42
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cell.yaml").write_text(f"defaults: {ROOT / 'recipes' / 'paper.yaml'}\n"
                                    "recipe: base_training\nmodel: resnet32\n")
    monkeypatch.chdir(tmp_path)
    summary = table1.run(["--recipes", "mine", "--dry-run", "--out", "runs"])
    assert [c["cell"] for c in summary["cells"]] == ["cell.yaml"]
    assert summary["cells"][0]["config"]["epochs"] == 200


def test_every_paper_cell_is_package_data():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    patterns = parser["options.package_data"]["chestkd"].split()
    package = ROOT / "chestkd"
    shipped = set(table1.PAPER_CELLS.parent.rglob("*.yaml"))
    assert len(shipped) >= 44  # the 42 cells, paper.yaml and paper_kd.yaml
    # setuptools globs each pattern from the package folder ("*" stays within one folder)
    assert shipped <= {p for pattern in patterns for p in package.glob(pattern)}


def test_options_that_would_break_the_table_are_refused(capsys):
    assert _main(["--config", "x.yaml", "--dry-run"]) == 2
    assert "--config" in capsys.readouterr().err
    assert _main(["--dry-run", "--no-such-option", "1"]) == 2
    assert "no-such-option" in capsys.readouterr().err


def test_a_diverging_cell_is_marked_failed_and_the_others_still_run(tmp_path, capsys):
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "a-diverges.yaml").write_text(
        "recipe: base_training\nmodel: conv3_student\noptimizer: sgd\n"
        "learning_rate: 1.0e+30\nschedule: constant\n")
    (cells / "b-learns.yaml").write_text("recipe: base_training\nmodel: conv3_student\n")
    out = tmp_path / "runs"
    code = _main(["--recipes", str(cells), "--out", str(out), "--epochs", "1",
                  "--batch-size", "16", "--image-size", "32", "phantom_images=120",
                  "phantom_size=32", "latency_images=2", "bootstrap=40", "jit_compile=false"])
    captured = capsys.readouterr()
    assert code == 2
    assert "[fail] a-diverges.yaml: training diverged at epoch 1 of 1" in captured.out
    assert "1 of 2 cells failed: a-diverges.yaml" in captured.err
    # the good cell ran to the end, after the failed one, and is in the report
    finished = [p for p in out.glob("base_training-conv3_student-*")
                if (p / "metrics.json").exists()]
    assert len(finished) == 1
    assert (out / "report" / "table1.md").exists()
    status = {c["cell"]: c for c in json.loads((out / "table1_status.json").read_text())}
    assert status["a-diverges.yaml"]["status"] == "failed"
    assert "diverged" in status["a-diverges.yaml"]["error"]
    assert status["b-learns.yaml"]["status"] == "ran"
    # run again: the good cell is done, the failed one is tried again (and fails again)
    assert _main(["--recipes", str(cells), "--out", str(out), "--epochs", "1",
                  "--batch-size", "16", "--image-size", "32", "phantom_images=120",
                  "phantom_size=32", "latency_images=2", "bootstrap=40",
                  "jit_compile=false"]) == 2
    again = capsys.readouterr().out
    assert "[done] b-learns.yaml" in again and "[fail] a-diverges.yaml" in again


def _cells(tmp_path, *cells):
    folder = tmp_path / "cells"
    folder.mkdir()
    for name, text in cells:
        (folder / name).write_text(text)
    return folder


def _finished_run(out, name, config, stages=("training", "evaluation", "results")):
    """A run folder of ``config`` as a recipe leaves it (finished unless ``stages`` or
    metrics.json say otherwise)."""
    import yaml
    from chestkd.training.config import config_id
    folder = out / name
    folder.mkdir(parents=True)
    saved = {k: v for k, v in config.items() if not k.startswith("_")}
    (folder / "config.yaml").write_text(yaml.safe_dump({**saved,
                                                        "config_id": config_id(config)}))
    (folder / "stages.json").write_text(json.dumps({s: {} for s in stages}))
    return folder


def test_each_seed_of_a_table_is_a_cell_of_its_own(tmp_path, capsys):
    """Regression: cells are found by config_id, which leaves --seeds out, so table1
    --seeds 0,1 found seed 0's run and marked the cell done: seed 1 never ran."""
    from chestkd.experiments import table_cells
    cells = _cells(tmp_path, ("base.yaml", "recipe: base_training\nmodel: conv3_student\n"))
    out = tmp_path / "runs"
    options = ["--out", str(out), "--epochs", "1", "--seeds", "0,1"]
    summary = table1.run(["--recipes", str(cells), "--dry-run", *options])
    assert [(c["cell"], c["config"]["seed"], c["config"]["seeds"]) for c in summary["cells"]] == [
        ("base.yaml seed 0", 0, None), ("base.yaml seed 1", 1, None)]
    # seed 0 finished before: seed 1 still runs, with its own seed
    seed0 = _finished_run(out, "base_training-conv3_student-0", summary["cells"][0]["config"])
    (seed0 / "metrics.json").write_text('{"mean_auc": 0.6}')
    ran = []
    recipes = {**table1.RECIPES, "base_training": SimpleNamespace(
        DEFAULTS=table1.RECIPES["base_training"].DEFAULTS, run=ran.append)}
    cells_of, given = table_cells.table_cells(sorted(cells.glob("*.yaml")), options, recipes)
    result = table_cells.run_cells(cells_of, given, recipes, dry_run=False)
    assert [c["status"] for c in result] == ["done", "ran"]
    assert result[0]["run"] == str(seed0)
    assert len(ran) == 1 and ran[0][-2:] == ["seed=1", "seeds=null"]
    # what the recipe resolves from those options is the cell it was asked for
    from chestkd.training.config import config_id, resolve_config
    resolved = {**resolve_config(ran[0], recipes["base_training"].DEFAULTS),
                "recipe": "base_training"}
    assert (resolved["seed"], resolved["seeds"]) == (1, None)
    assert config_id(resolved) == config_id(result[1]["config"])


def test_a_phantom_cell_resolves_with_its_recipes_own_profile(tmp_path):
    """Regression: a cell was resolved without the recipe's RECIPE_PROFILES, so a phantom KD
    or self-training cell leaving batch_size, epochs or model to the defaults got another
    config_id than the run it started (batch 32, not kd's 16): never done, trained again."""
    from chestkd.experiments.table_cells import resolved_cell
    from chestkd.recipes import kd, self_training
    from chestkd.training.config import config_id, resolve_config
    cells = _cells(tmp_path, ("kd.yaml", "recipe: kd\nteacher: resnet20\n"
                                         "student: conv3_student\n"),
                   ("self.yaml", "recipe: self_training\n"))
    for name, module, recipe in (("kd.yaml", kd, "kd"),
                                 ("self.yaml", self_training, "self_training")):
        _, config = resolved_cell(cells / name, [], table1.RECIPES)
        run = {**resolve_config(["--config", str(cells / name)], module.DEFAULTS,
                                recipe_profiles=module.RECIPE_PROFILES), "recipe": recipe}
        assert (config["batch_size"], config["epochs"]) == (16, 10)
        assert config_id(config) == config_id(run)
    assert config["model"] == "resnet20"


def test_a_stopped_cell_is_resumed_in_its_own_folder(tmp_path, capsys):
    """Regression: a cell whose run was stopped part way (a killed table) was started again in
    a new folder, its fit repeated and the half run left behind; now it is resumed."""
    from chestkd.experiments import table_cells
    cells = _cells(tmp_path, ("kd.yaml", "recipe: kd\nteacher: resnet20\n"
                                         "student: conv3_student\nbatch_size: 16\n"))
    out = tmp_path / "runs"
    options = ["--out", str(out), "--epochs", "3"]
    cells_of, given = table_cells.table_cells([cells / "kd.yaml"], options, table1.RECIPES)
    config = cells_of[0][2]
    # another experiment's stopped run (2 epochs), then this cell's
    other = _finished_run(out, "standard_kd-conv3_student-1",
                          {**config, "epochs": 2}, stages=("training",))
    stopped = _finished_run(out, "standard_kd-conv3_student-2", config, stages=("training",))
    ran = []
    recipes = {"kd": SimpleNamespace(DEFAULTS=table1.RECIPES["kd"].DEFAULTS, run=ran.append)}
    summary = table_cells.run_cells(cells_of, given, recipes, dry_run=False)
    assert ran == [["--resume", str(stopped)]]
    assert summary[0]["status"] == "ran"
    assert f"[run ] kd.yaml (kd): resuming {stopped}" in capsys.readouterr().out
    assert table_cells.interrupted(config) == stopped and not table_cells.finished(config)
    assert table_cells.interrupted({**config, "epochs": 2}) == other
    # once its results are written it is the cell's finished run, and nothing runs again
    (stopped / "metrics.json").write_text('{"strategy": "standard_kd", "mean_auc": 0.6}')
    (stopped / "stages.json").write_text(json.dumps(
        {"training": {}, "evaluation": {}, "results": {}}))
    assert table_cells.finished(config) == stopped and table_cells.interrupted(config) is None
    ran.clear()
    assert table_cells.run_cells(cells_of, given, recipes, dry_run=False)[0]["status"] == "done"
    assert ran == []
