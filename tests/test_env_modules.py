"""An environment is one module: discovery, the ``module.path:SPEC`` form for one outside the repository, and the
errors a broken module or a malformed spec gives."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import envs_glue
from algos.core.config import BENCHMARK, ConfigError, protocol_for
from algos.core.trainer import build_config
from envs_glue import DEFAULT_ENVS, ENV_SPECS, EnvSpec, EnvSpecError, env_spec, make_env
from envs_glue.point_robot import SPEC as POINT_ROBOT
from envs_glue.spec import check_spec

REPO_ROOT = Path(__file__).resolve().parents[1]

# an environment module as a user writes one: its class, its task list, its spec with its protocol, nothing else
PROBE_ENV = '''
import numpy as np

from envs_glue.point_robot import SPEC as POINT_ROBOT, PointRobotEnv
from envs_glue.spec import EnvSpec


class ShiftedPointRobotEnv(PointRobotEnv):
    """The point robot with every goal moved by (0.5, 0)."""

    @staticmethod
    def make_goals() -> np.ndarray:
        return PointRobotEnv.make_goals() + np.array([0.5, 0.0])


SPEC = EnvSpec("shifted-point-robot", "probe/ShiftedPointRobot-v0", ShiftedPointRobotEnv, POINT_ROBOT.protocol,
               max_episode_steps=20, sparse_reward=False, known_optimum=None, known_optimum_note="not computed",
               task_label="goal angle (rad)", goal_plane=True)
'''


def _subprocess_env(tree: Path, home: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HOME": str(home)}


def _copy_of_the_repository(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in ("algos", "envs_glue", "models", "experiments"):
        shutil.copytree(REPO_ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.ipynb", "notebooks"))
    return tree


# ---------------------------------------------------------------------- discovery
def test_every_module_with_a_spec_is_discovered_in_table_order():
    defining = sorted(path.stem for path in (REPO_ROOT / "envs_glue").glob("*.py")
                      if "\nSPEC = " in path.read_text())
    assert sorted(spec.env_class.__module__.split(".")[-1] for spec in ENV_SPECS.values()) == defining
    assert list(ENV_SPECS) == ["point-robot", "sparse-point-robot", "cheetah-vel", "cheetah-dir", "ant-dir",
                               "ant-goal", "humanoid-dir", "walker-rand-params", "hopper-rand-params",
                               "ml1-reach", "ml1-push", "ml1-pick-place", "ml10"]
    assert DEFAULT_ENVS == ("point-robot", "sparse-point-robot", "cheetah-vel")
    for name, spec in ENV_SPECS.items():
        assert spec.name == name and BENCHMARK[name] is spec.protocol
        assert spec.env_class.max_episode_steps == spec.max_episode_steps
        assert spec.entry_point == f"{spec.env_class.__module__}:{spec.env_class.__qualname__}"


def test_a_dropped_module_is_discovered_with_no_other_edit(tmp_path):
    tree = _copy_of_the_repository(tmp_path)
    (tree / "envs_glue" / "shifted_point_robot.py").write_text(PROBE_ENV)
    listed = subprocess.run(
        [sys.executable, "-c", "import envs_glue, algos.core.config as c; print(list(envs_glue.ENV_SPECS)); "
                               "print(c.protocol_for('shifted-point-robot', 'smoke').num_iterations)"],
        cwd=tree, env=_subprocess_env(tree, tmp_path), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    names, iterations = listed.stdout.splitlines()
    # its report_rank (the default, 1000) puts it after every environment of the repository
    assert ast.literal_eval(names) == [*ENV_SPECS, "shifted-point-robot"] and iterations == "2"


@pytest.mark.parametrize("body, expected", [
    # the protocol left out: the module does not import, and the error names it and what is missing
    ("SPEC = EnvSpec('broken', 'probe/Broken-v0', PointRobotEnv, max_episode_steps=20, sparse_reward=False, "
     "known_optimum=None, known_optimum_note='', task_label='goal')",
     r"environment module envs_glue\.broken does not import: TypeError: .*'protocol'"),
    # no environment class and a protocol of the wrong type: one error naming the module and both fields
    ("SPEC = EnvSpec('broken', 'probe/Broken-v0', None, {'num_iterations': 20}, max_episode_steps=20, "
     "sparse_reward=False, known_optimum=None, known_optimum_note='', task_label='goal')",
     r"envs_glue\.broken\.SPEC: malformed EnvSpec: `protocol` must be ProtocolConfig.*`env_class` must be a MetaEnv"),
    ("SPEC = {'name': 'broken'}", r"envs_glue\.broken\.SPEC: expected an envs_glue\.spec\.EnvSpec, got dict"),
    ("raise RuntimeError('no model file')", r"environment module envs_glue\.broken does not import: RuntimeError"),
])
def test_a_broken_module_or_malformed_spec_stops_discovery_naming_it(tmp_path, body, expected):
    tree = _copy_of_the_repository(tmp_path)
    (tree / "envs_glue" / "broken.py").write_text(
        "from envs_glue.point_robot import PointRobotEnv\nfrom envs_glue.spec import EnvSpec\n\n" + body + "\n")
    result = subprocess.run([sys.executable, "-c", "import envs_glue"], cwd=tree, env=_subprocess_env(tree, tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert re.search(expected, result.stderr.strip().splitlines()[-1]), result.stderr


def _malformed(**changes) -> EnvSpec:
    return dataclasses.replace(POINT_ROBOT, **changes)


@pytest.mark.parametrize("changes, named", [
    ({"env_class": dict}, "`env_class` must be a MetaEnv subclass"),
    ({"protocol": None}, "`protocol` must be ProtocolConfig, got None"),
    ({"max_episode_steps": 200}, "`max_episode_steps` is 200 but PointRobotEnv.max_episode_steps is 20"),
    ({"sparse_reward": 1}, "`sparse_reward` must be bool"),
    ({"report_rank": True}, "`report_rank` must be int"),
    ({"name": ""}, "`name` is empty"),
    ({"known_optimum": float("nan")}, "`known_optimum` must be finite"),
    ({"task_label": None}, "`task_label` must be str"),
])
def test_a_malformed_spec_is_refused_naming_what_is_wrong(changes, named):
    with pytest.raises(EnvSpecError, match="my_module.SPEC: malformed EnvSpec") as error:
        check_spec(_malformed(**changes), "my_module.SPEC")
    assert named in str(error.value)
    assert check_spec(POINT_ROBOT, "envs_glue.point_robot.SPEC") is POINT_ROBOT


# ---------------------------------------------------------------------- an environment outside the repository
@pytest.fixture
def outside_package(tmp_path, monkeypatch):
    package = tmp_path / "outside" / "my_envs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "shifted.py").write_text(PROBE_ENV)
    (package / "not_a_spec.py").write_text("SPEC = 3\n")
    (package / "taken_id.py").write_text(PROBE_ENV.replace("probe/ShiftedPointRobot-v0", "incontext/PointRobot-v0"))
    monkeypatch.syspath_prepend(str(tmp_path / "outside"))
    yield tmp_path / "outside"
    for name in [m for m in sys.modules if m == "my_envs" or m.startswith("my_envs.")]:
        del sys.modules[name]


def test_an_environment_outside_the_repository_is_named_module_colon_attribute(outside_package):
    reference = "my_envs.shifted:SPEC"
    spec = env_spec(reference)
    assert spec.name == "shifted-point-robot" and reference not in ENV_SPECS  # the repository's list is unchanged
    env = make_env(reference, seed=0)
    np.testing.assert_array_equal(env.unwrapped.tasks, make_env("point-robot").unwrapped.tasks + [0.5, 0.0])
    config = build_config(reference, "pearl", "smoke", 0)
    assert config.env == reference and config.protocol == protocol_for("point-robot", "smoke")
    assert env_spec(reference) is spec  # imported once


@pytest.mark.parametrize("reference, message", [
    ("my_envs.missing:SPEC", "env 'my_envs.missing:SPEC': module my_envs.missing does not import: ModuleNotFoundError"),
    ("my_envs.shifted:OTHER", "env 'my_envs.shifted:OTHER': module my_envs.shifted has no attribute 'OTHER'"),
    ("my_envs.not_a_spec:SPEC", "env 'my_envs.not_a_spec:SPEC': expected an envs_glue.spec.EnvSpec, got int"),
    ("my_envs.shifted:", "is not of the form module.path:ATTRIBUTE"),
    ("my_envs.taken_id:SPEC", "gym id 'incontext/PointRobot-v0' is already registered for envs_glue.point_robot"),
])
def test_a_reference_that_does_not_resolve_is_a_configuration_error(outside_package, reference, message):
    with pytest.raises(ConfigError) as error:
        build_config(reference, "pearl", "smoke", 0)
    assert message in str(error.value)


def test_the_run_command_trains_an_outside_environment_and_records_its_reference(outside_package, tmp_path):
    reference = "my_envs.shifted:SPEC"
    env = {**_subprocess_env(REPO_ROOT, tmp_path), "PYTHONPATH": f"{REPO_ROOT}:{outside_package}"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "experiments.run", "--algo", "pearl", "--tier", "smoke",
                               "--no-progress", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    trained = run("--env", reference, "--run-dir", str(tmp_path / "run"), "--set", "num_iterations=1")
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["env"] == reference
    assert json.loads((tmp_path / "run" / "results.json").read_text())["env"] == reference


def test_a_mistyped_reference_is_one_line_and_exit_2_before_anything_is_written(outside_package, tmp_path, capsys):
    from experiments.run import main as run_main
    code = run_main(["--env", "my_envs.shiftd:SPEC", "--algo", "pearl", "--tier", "smoke",
                     "--run-dir", str(tmp_path / "never"), "--no-progress"])
    stderr = capsys.readouterr().err
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "my_envs.shiftd" in stderr and not (tmp_path / "never").exists()


def test_an_unknown_name_lists_the_environments_and_the_reference_form():
    with pytest.raises(ValueError, match="unknown env 'cheetah-velocity'.*module.path:ATTRIBUTE"):
        envs_glue.env_spec("cheetah-velocity")
