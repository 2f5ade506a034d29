"""Meta-World ML1 (docs/PROTOCOL.md#meta-world-ml1), an optional extra, and the success rate evaluation reports for
environments that report success.

In the main environment (no ``metaworld``) the tests of the environments themselves skip; what runs there: discovery
lists them, building one is one clear error (exit 2 from ``experiments.run``), and the success-rate arithmetic of
``evaluate`` on a point robot that reports success. In the Meta-World environment (``requirements-metaworld.txt``)
everything runs."""
from __future__ import annotations

import json
import math
import pickle
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from algos import ALGORITHMS
from algos.core.config import protocol_for
from algos.core.evaluation import evaluate
from envs_glue import DEFAULT_ENVS, ENV_SPECS, make_env
from envs_glue.metaworld_ml1 import INSTALL_HINT, METAWORLD_SEED, OptionalExtraMissingError, ml1_task_lists
from experiments.engine import unsupported_reason
from experiments.run import main as run_main
from tests.conftest import METAWORLD_SMOKE_METHODS, RecordingAgent

ML1_ENVS = {"ml1-reach": "reach-v3", "ml1-push": "push-v3", "ml1-pick-place": "pick-place-v3"}


# ---------------------------------------------------------------------- without metaworld (the main environment)
def test_ml1_environments_are_discovered_whether_or_not_metaworld_is_installed():
    assert list(ENV_SPECS)[-4:] == [*ML1_ENVS, "ml10"]
    for name in ML1_ENVS:
        spec = ENV_SPECS[name]
        assert spec.reports_success and not spec.runs_by_default and name not in DEFAULT_ENVS
        assert spec.max_episode_steps == 200 and not spec.sparse_reward
        smoke = protocol_for(name, "smoke")
        assert smoke.num_initial_steps == smoke.num_steps_prior == 200
    assert not any(ENV_SPECS[name].reports_success for name in ENV_SPECS if name not in [*ML1_ENVS, "ml10"])
    # each spec holds its own protocol: an edit to one cannot leak into the others
    assert len({id(ENV_SPECS[name].protocol) for name in ML1_ENVS}) == 3


@pytest.fixture
def metaworld_missing(monkeypatch):
    """``import metaworld`` fails, as where it is not installed, even where it is."""
    ml1_task_lists.cache_clear()
    monkeypatch.setitem(sys.modules, "metaworld", None)
    yield
    ml1_task_lists.cache_clear()


def test_building_an_ml1_environment_without_metaworld_is_one_clear_error(metaworld_missing):
    with pytest.raises(OptionalExtraMissingError) as error:
        make_env("ml1-reach")
    assert str(error.value).startswith(INSTALL_HINT) and "mujoco==3.3.0" in str(error.value)


def test_run_without_metaworld_prints_one_line_and_exits_2(metaworld_missing, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_main(["--env", "ml1-push", "--algo", "setformer", "--tier", "smoke", "--run-dir", str(run_dir),
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: Meta-World is an optional extra")
    assert not run_dir.exists()  # refused before anything was written


# ---------------------------------------------------------------------- the success rate evaluation reports
class PointRobotWithSuccess(gym.Wrapper):
    """The point robot, reporting success within ``radius`` of the goal; it logs whether each episode succeeded, so
    the test can score trials on its own."""

    def __init__(self, radius: float):
        super().__init__(make_env("point-robot"))
        self.radius, self.episode_succeeded = radius, []

    def reset(self, **kwargs):
        self.episode_succeeded.append(False)
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = bool(np.linalg.norm(obs - self.env.unwrapped.task) <= self.radius)
        self.episode_succeeded[-1] |= success
        return obs, reward, terminated, truncated, {**info, "success": success}


def test_success_rate_is_the_share_of_trials_whose_scored_episode_succeeded():
    env = PointRobotWithSuccess(radius=0.4)
    env.reset(seed=11)
    env.episode_succeeded.clear()  # only the evaluation's episodes count
    agent = RecordingAgent(2, 2, policy="random", seed=3)
    tasks, repeats, episodes = env.unwrapped.test_task_ids, 3, 3   # 60 steps of 20: the third episode is scored
    result = evaluate(env, agent, tasks, num_steps_per_eval=60, num_exp_traj_eval=1, num_repeats=repeats,
                      max_path_length=20, sparse_rewards=False, reports_success=True)
    scored = np.array(env.episode_succeeded).reshape(len(tasks), repeats, episodes)[:, :, -1]
    assert result.meta_test_success == pytest.approx(scored.mean())
    np.testing.assert_allclose(result.per_task_final_success, scored.mean(axis=1))
    assert 0.0 < result.meta_test_success < 1.0  # both outcomes occurred: the count is not trivially 0 or 1
    assert result.scalars()["meta_test_success"] == result.meta_test_success


def test_environments_without_success_report_no_success_figure():
    env = make_env("point-robot", seed=0)
    result = evaluate(env, RecordingAgent(2, 2), env.unwrapped.test_task_ids[:2], num_steps_per_eval=60,
                      num_exp_traj_eval=1, num_repeats=1, max_path_length=20, sparse_rewards=False)
    assert result.meta_test_success is None and result.per_task_final_success is None
    assert "meta_test_success" not in result.scalars()


# ---------------------------------------------------------------------- with metaworld (its own environment)
@pytest.fixture(scope="module")
def metaworld():
    return pytest.importorskip("metaworld")


def _rand_vecs(tasks) -> np.ndarray:
    return np.array([pickle.loads(task.data)["rand_vec"] for task in tasks])


@pytest.mark.parametrize("name", ML1_ENVS)
def test_task_lists_are_ml1s_with_validation_tasks_from_the_validation_seed(metaworld, name):
    meta = make_env(name).unwrapped
    assert (meta.num_train_tasks, meta.num_test_tasks, meta.num_validation_tasks) == (50, 50, 10)
    assert meta.test_task_ids == list(range(50, 100)) and meta.validation_task_ids == list(range(100, 110))
    benchmark = metaworld.ML1(ML1_ENVS[name], seed=METAWORLD_SEED)
    validation = metaworld.ML1(ML1_ENVS[name], seed=4242).train_tasks[:10]
    drawn = np.concatenate([_rand_vecs(benchmark.train_tasks), _rand_vecs(benchmark.test_tasks),
                            _rand_vecs(validation)])
    np.testing.assert_array_equal(meta.tasks, np.concatenate([drawn[:, 3:], drawn[:, :3]], axis=1))
    distances = np.abs(meta.tasks[:, None] - meta.tasks[None]).max(axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 1e-6  # train, test and validation tasks are pairwise distinct


def test_task_lists_are_fixed_and_leave_numpys_global_state_alone(metaworld):
    first = make_env("ml1-reach").unwrapped.tasks
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    ml1_task_lists.cache_clear()  # drawn again from Meta-World, not from the cache
    np.testing.assert_array_equal(make_env("ml1-reach").unwrapped.tasks, first)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("name", ML1_ENVS)
def test_gymnasium_env_checker_passes(metaworld, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded object entries, and the hidden goal's entries fixed at 0
        check_env(make_env(name).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", ML1_ENVS)
def test_spaces_goal_hidden_and_200_step_episodes(metaworld, name):
    env = make_env(name, seed=0)
    env.unwrapped.reset_task(57)
    obs, info = env.reset()
    assert obs.shape == (39,) and env.action_space.shape == (4,)
    np.testing.assert_array_equal(obs[-3:], 0.0)  # ML1 hides the goal
    np.testing.assert_array_equal(info["task"], env.unwrapped.tasks[57])
    np.testing.assert_allclose(env.unwrapped.sim._target_pos[:2], env.unwrapped.tasks[57, :2])
    for step in range(1, 201):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and truncated == (step == 200) and isinstance(info["success"], bool)
        assert 0.0 <= reward <= 10.0


def _long_tail(distance: float, radius: float, margin: float) -> float:
    """Meta-World's ``tolerance(distance, (0, radius), margin, "long_tail")``: 1 inside the radius, then
    ``1 / (1 + (d * sqrt(1 / 0.1 - 1))^2)`` with ``d`` the distance beyond it over the margin (0.1 at the margin)."""
    if distance <= radius:
        return 1.0
    return 1.0 / (1.0 + ((distance - radius) / margin * math.sqrt(1.0 / 0.1 - 1.0)) ** 2)


# Meta-World's success radii: the gripper at the goal (reach), the puck at the goal (push, pick-place)
SUCCESS = {"ml1-reach": ("gripper", 0.05), "ml1-push": ("object", 0.05), "ml1-pick-place": ("object", 0.07)}


@pytest.mark.parametrize("name", ML1_ENVS)
def test_success_and_reach_reward_recomputed_from_the_state(metaworld, name):
    """Meta-World's scripted policy, shown the goal the agent never sees, drives each task to success; at every step
    the success flag (and on reach the reward) is recomputed from the simulator's state."""
    from metaworld import policies
    scripted = {"ml1-reach": policies.SawyerReachV3Policy, "ml1-push": policies.SawyerPushV3Policy,
                "ml1-pick-place": policies.SawyerPickPlaceV3Policy}[name]()
    env = make_env(name, seed=0)
    sim, successes = env.unwrapped.sim, []
    for task in (0, 63, 104):  # a train, a test and a validation task
        env.unwrapped.reset_task(task)
        obs, _ = env.reset()
        goal = sim._target_pos.copy()
        for _ in range(200):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the policy warns that its gains exceed the action range
                action = np.clip(scripted.get_action(np.concatenate([obs[:-3], goal])), -1.0, 1.0)
            obs, reward, _, truncated, info = env.step(action)
            gripper = (sim.data.site("rightEndEffector").xpos + sim.data.site("leftEndEffector").xpos) / 2.0
            what, radius = SUCCESS[name]
            distance = np.linalg.norm((gripper if what == "gripper" else obs[4:7]) - goal)
            assert info["success"] == (distance <= radius)
            if name == "ml1-reach":
                margin = np.linalg.norm(sim.hand_init_pos - goal)
                assert reward == pytest.approx(10.0 * _long_tail(distance, 0.05, margin), abs=1e-9)
            successes.append(info["success"])
    assert any(successes) and not all(successes)  # both outcomes were checked


@pytest.mark.parametrize("env", ["ml1-reach", "ml10"])
def test_the_smoke_runs_cover_every_method_that_runs_on_meta_world(env):
    runnable = {algo for algo in ALGORITHMS if unsupported_reason(algo, env) is None}
    assert runnable == {param.values[0] for param in METAWORLD_SMOKE_METHODS}


@pytest.mark.parametrize("algo", METAWORLD_SMOKE_METHODS)
def test_methods_train_on_ml1_reach_and_report_success(metaworld, tmp_path, algo):
    """A smoke run, with one evaluation episode per trial and the evaluation after the last iteration only (an ML1
    evaluation covers 60 tasks; the tier's three episodes each would take minutes on a busy CPU)."""
    run_dir = tmp_path / "run"
    code = run_main(["--env", "ml1-reach", "--algo", algo, "--tier", "smoke", "--seed", "0", "--run-dir",
                     str(run_dir), "--no-progress", "--set", "num_steps_per_eval=200", "num_exp_traj_eval=0",
                     "eval_interval=2"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    final = results["final_eval"]
    assert math.isfinite(results["meta_test_return"]) and 0.0 <= results["meta_test_success"] <= 1.0
    assert len(final["per_task_final_success"]) == 50 and 0.0 <= final["validation_success"] <= 1.0
    assert final["meta_test_success"] == pytest.approx(np.mean(final["per_task_final_success"]))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "meta_test_success" not in rows[0] and "validation_success" in rows[1]  # evaluated after iteration 1
    assert results["learning_curve"][-1]["meta_test_success"] == results["meta_test_success"]
