"""Runs ``docs/tutorial.ipynb`` in a real Jupyter kernel of this interpreter.

    python tools/tutorial.py           # execute it in a scratch folder, save the outputs
    python tools/tutorial.py --check   # execute it, fail on a cell error, keep the file

The kernel is this interpreter's ipykernel (a ``python3`` kernel spec written to the scratch
folder, so that no other Python installed on the machine is picked up), started with this
process's environment and ``src/`` first on its path. The notebook runs in the scratch folder,
so its outputs name relative paths only; ``tests/test_tutorial.py`` runs it too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def execute(folder: str | Path, notebook: Path = NOTEBOOK, timeout: int = 300):
    """The notebook executed with ``folder`` as its working directory (an error in a cell
    raises ``nbclient.exceptions.CellExecutionError``)."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    folder = Path(folder)
    spec = folder / ".kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3",
                                                  "language": "python"}))  # fmt: skip
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    env = dict(os.environ)
    import rcnn

    source = str(Path(rcnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("RCNN_CACHE_DIR", str(folder / "cache"))  # never the user's cache
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout, km=manager, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})  # fmt: skip
    client.execute(env=env, cwd=str(folder))
    return nb


def main(argv: list[str]) -> int:
    import nbformat

    with tempfile.TemporaryDirectory(prefix="rcnn-tutorial-") as folder:
        nb = execute(folder)
    for i, cell in enumerate(nb.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing:
            print(
                f"cell {i}: {timing['iopub.execute_input']} .. {timing.get('shell.execute_reply')}"
            )
    if "--check" not in argv:
        for cell in nb.cells:  # timings would change the file on every run
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, NOTEBOOK)
        print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
