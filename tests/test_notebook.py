"""The tutorial notebook runs top to bottom without a cell error (headless, as CI runs it)."""

import pytest

from helpers import ROOT

NOTEBOOK = ROOT / "MiniTransformer_BPE_Tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_notebook_runs_without_errors():
    nbformat = pytest.importorskip("nbformat", reason="running the notebook needs the nbformat extra")
    nbclient = pytest.importorskip("nbclient", reason="running the notebook needs the nbclient extra")
    pytest.importorskip("ipykernel", reason="running the notebook needs the ipykernel extra")
    pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "val loss" in outputs and "temperature 1.5" in outputs  # it trained and it sampled
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the LR schedule and loss.png
