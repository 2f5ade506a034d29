"""experiments.rerun_check on a real smoke cell: an unchanged code base reproduces the cell's logged numbers bit for
bit, one altered number is named as the first mismatch, and bad input fails clearly."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from experiments import rerun_check
from tests.conftest import train_smoke_cell


@pytest.fixture(scope="module")
def smoke_cell(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rerun")
    return train_smoke_cell(root / "smoke" / "cells" / "point-robot" / "setformer" / "0", "point-robot", "setformer")


def _check(*args: str) -> int:
    threads = torch.get_num_threads()
    try:
        return rerun_check.main(list(args))
    finally:
        torch.set_num_threads(threads)


def test_unchanged_code_reproduces_the_cell_bit_for_bit(smoke_cell):
    assert _check(str(smoke_cell), "--iterations", "2") == 0
    tier_dir = smoke_cell.parents[3]
    report = json.loads((tier_dir / "rerun_checks.json").read_text())  # written beside the tier's cells
    (entry,) = report["checks"].values()
    assert entry["identical"] and entry["mismatch_count"] == 0
    assert entry["iterations"] == 2 and entry["seed"] == 0 and entry["algo"] == "setformer"
    # every logged loss and evaluation number of both iterations, timings aside
    rows = [json.loads(line) for line in (smoke_cell / "metrics.jsonl").read_text().splitlines()][:2]
    assert entry["numbers_compared"] == sum(len(row) - 1 for row in rows)
    assert "**identical**" in (tier_dir / "RERUN_CHECKS.md").read_text()
    # both CPUs named with their bf16 support: one model name covers CPUs with and without it
    machine = json.loads((smoke_cell / "results.json").read_text())["machine"]
    bf16 = "native bf16" if machine["cpu_native_bf16"] else "no native bf16"
    assert entry["cell_cpu"] == entry["checked_on_cpu"] == f"{machine['cpu']} ({bf16})"


def test_an_altered_number_is_named_and_the_check_fails(smoke_cell, tmp_path):
    cell = tmp_path / "cells" / "point-robot" / "setformer" / "0"
    shutil.copytree(smoke_cell, cell)
    rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    loss_key = next(k for k in rows[1] if k.startswith("train/"))
    rows[1][loss_key] = math.nextafter(rows[1][loss_key], math.inf)  # one unit in the last place
    (cell / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert _check(str(cell), "--iterations", "2", "--out", str(tmp_path)) == 1
    (entry,) = json.loads((tmp_path / "rerun_checks.json").read_text())["checks"].values()
    assert not entry["identical"] and entry["mismatch_count"] == 1
    assert entry["mismatches"][0]["iteration"] == 1 and entry["mismatches"][0]["key"] == loss_key
    assert f"`{loss_key}`" in (tmp_path / "RERUN_CHECKS.md").read_text()


def test_bad_input_fails_with_a_clear_error(smoke_cell, tmp_path, capsys):
    assert _check(str(tmp_path / "nowhere")) == 2
    assert "not a folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((smoke_cell / "config.json").read_text())
    assert _check(str(unfinished), "--out", str(tmp_path)) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rerun_check.parse_args([str(smoke_cell), "--iterations", "0"])
    assert _check(str(smoke_cell), "--iterations", "99", "--out", str(tmp_path)) == 2
    assert "fewer than --iterations 99" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(smoke_cell, corrupt)
    with open(corrupt / "metrics.jsonl", "a") as handle:
        handle.write('{"iteration": 2, "train/qf_loss": 1.\n')  # torn: a finished cell's file must be whole
    assert _check(str(corrupt), "--out", str(tmp_path)) == 2
    assert "line 3 is not JSON" in capsys.readouterr().err
