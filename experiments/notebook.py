"""Execute an analysis notebook headless against one run, with what requirements.txt installs (nbclient, ipykernel):

    python -m experiments.notebook latent_space runs/point-robot/setformer/42-<stamp>

The notebook's ``RUN_DIR`` is set to the run (a cell after its ``parameters`` cell) and the executed notebook,
figures included, is written into the run folder (``--out`` elsewhere). To work in the notebooks interactively
instead: ``pip install jupyterlab``, then ``jupyter lab experiments/notebooks/`` and set ``RUN_DIR`` there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def execute(name: str, run_dir: Path, out: Path | None = None) -> Path:
    """Run notebook ``name`` top to bottom on ``run_dir`` and write the executed copy to ``out``; returns its path."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    position = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(position + 1, nbformat.v4.new_code_cell(f"RUN_DIR = {str(run_dir.resolve())!r}"))
    out = Path(out) if out else run_dir / f"{name}.ipynb"
    try:
        NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
                       extra_arguments=["--IPKernelApp.log_level=ERROR"]).execute()  # no kernel chatter
    except CellExecutionError as error:
        nbformat.write(notebook, out)
        raise RuntimeError(f"{name} stopped at a cell ({error.ename}: {error.evalue}); the notebook as far as it "
                           f"ran is in {out}") from None
    nbformat.write(notebook, out)
    return out


def main(argv=None) -> int:
    names = sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))
    parser = argparse.ArgumentParser(prog="python -m experiments.notebook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=names)
    parser.add_argument("run_dir", type=Path, help="the run to analyse (it needs its checkpoint.pt)")
    parser.add_argument("--out", type=Path, help="where to write the executed notebook (default: in the run folder)")
    args = parser.parse_args(argv)
    if not (args.run_dir / "config.json").exists():
        print(f"error: {args.run_dir} is not a run directory (no config.json)", file=sys.stderr)
        return 2
    try:
        out = execute(args.name, args.run_dir, args.out)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"executed {args.name} on {args.run_dir}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
