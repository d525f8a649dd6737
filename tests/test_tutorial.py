"""`docs/tutorial.ipynb` runs, cell by cell, in a real Jupyter kernel of this interpreter."""

import json
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parents[1] / "docs" / "tutorial.ipynb"


def test_the_tutorial_runs_without_a_cell_error(tmp_path):
    from tools.tutorial import execute

    execute(tmp_path)  # nbclient raises CellExecutionError on a cell's error
    # Every stage drew its picture, and the committed notebook keeps its outputs to be read.
    for name in ("scenes.png", "curves.png", "detections.png", "explain.png"):
        assert list(tmp_path.rglob(name)), name
    committed = json.loads(NOTEBOOK.read_text())
    shown = [o for c in committed["cells"] for o in c.get("outputs", []) if "data" in o]
    assert sum("image/png" in o["data"] for o in shown) >= 5
