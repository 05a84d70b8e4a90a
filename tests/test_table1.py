"""The table runner: the paper's cells ship with the package and are found from any working
directory, it takes the recipes' own flags (--out, --epochs, ...), and a failing cell is
reported while the others run."""
import configparser
import json
from pathlib import Path

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
