"""notebooks/colab_quickstart.ipynb runs top to bottom (kernel python3) at a tiny size, with
its real-data cells skipped by the REAL_DATA parameter; an error in any cell fails."""
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).parents[1]
NOTEBOOK = REPO / "notebooks" / "colab_quickstart.ipynb"


def _with_parameters(notebook, **values):
    """papermill's way: a cell of overrides right after the cell tagged ``parameters``."""
    index = next(i for i, cell in enumerate(notebook.cells)
                 if "parameters" in cell.metadata.get("tags", []))
    text = "\n".join(f"{key} = {value!r}" for key, value in values.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(text))
    return notebook


def test_the_quickstart_notebook_runs_without_an_error_cell(tmp_path, monkeypatch):
    notebook = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), TINY=True,
                                REAL_DATA=False, REPO_DIR=str(REPO), OUT=str(tmp_path / "runs"))
    # the kernel and its commands import this checkout, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env_home = os.environ.get("CHESTKD_HOME")
    assert env_home, "conftest sets CHESTKD_HOME: the kernel writes its phantom there"
    client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()   # raises CellExecutionError on the first cell that fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "REAL_DATA is False" in text
    shown = [o for o in outputs if o.output_type == "display_data"]
    assert any("image/png" in o.data for o in shown)                  # figures inline
    assert any("Mean AUC change" in o.data.get("text/markdown", "") for o in shown)
    predictions = list((tmp_path / "runs").glob("self_training-*/nih_predictions/"
                                                 "predictions.csv"))
    assert len(predictions) == 1 and len(predictions[0].read_text().splitlines()) == 3
