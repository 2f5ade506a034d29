"""The notebook command a finished run prints works with what requirements.txt installs: run exactly as printed, it
executes the notebook on that run and writes the executed copy, figures included, into the run folder."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from experiments import notebook
from tests.conftest import train_smoke_cell

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_printed_notebook_command_executes_the_notebook_on_the_run(tmp_path, capsys):
    run_dir = train_smoke_cell(tmp_path / "run", "point-robot", "setformer")
    printed = capsys.readouterr().out
    command = next(line.strip() for line in printed.splitlines() if "python -m experiments.notebook" in line)
    assert "jupyter lab" not in printed and "pip install jupyterlab" in printed  # the front end is optional
    argv = shlex.split(command.split("(")[0])
    assert argv[:3] == ["python", "-m", "experiments.notebook"] and Path(argv[-1]) == run_dir
    done = subprocess.run([sys.executable, *argv[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    executed = json.loads((run_dir / "latent_space.ipynb").read_text())
    outputs = [out for cell in executed["cells"] if cell["cell_type"] == "code" for out in cell["outputs"]]
    assert any("image/png" in out.get("data", {}) for out in outputs)
    assert any(str(run_dir.resolve()) in "".join(out.get("text", "")) for out in outputs)  # the run it was given


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert notebook.main(["latent_space", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} is not a run directory (no config.json)"
