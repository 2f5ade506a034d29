"""PEARL's MuJoCo suite on gymnasium v5 (docs/PROTOCOL.md#pearl-mujoco-suite): task lists, rewards recomputed from
the simulator's state, physics randomisation, gymnasium's checker and a smoke run of every method."""
from __future__ import annotations

import json
import math
import os
import warnings

import mujoco
import numpy as np
import pytest
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from gymnasium.utils.env_checker import check_env

from algos import ALGORITHMS
from algos.core.config import protocol_for
from envs_glue import ENV_SPECS, make_env
from experiments.engine import unsupported_reason
from tests.conftest import train_smoke_cell

SUITE = ["cheetah-dir", "ant-dir", "ant-goal", "humanoid-dir", "walker-rand-params", "hopper-rand-params"]
METHODS = ["sac-no-context", "setformer", "pearl", "focal", "varibad", "transformer", "sac-true-task"]  # every method that runs on them
# A smoke run here takes 15-120 s on a busy 2-core machine (evaluation covers the test and validation tasks, and
# ant-goal and humanoid-dir collect one episode on each of their 150 and 100 training tasks), so the default suite
# trains three pairs: a direction task, and both randomised-physics tasks (early termination, next observations in the
# context) with the set encoder and the recurrent one. The other 27 pairs run with INCONTEXT_SLOW_TESTS=1.
DEFAULT_SMOKE_CELLS = {("cheetah-dir", "pearl"), ("hopper-rand-params", "setformer"), ("walker-rand-params", "varibad")}
RUN_SLOW = os.environ.get("INCONTEXT_SLOW_TESTS") == "1"


def _pearl_counts(name):
    """(train, test) task counts of PEARL's configs/<env>.json (n_train_tasks, n_eval_tasks)."""
    return {"cheetah-dir": (2, 2), "ant-dir": (2, 2), "ant-goal": (150, 30), "humanoid-dir": (100, 30),
            "walker-rand-params": (40, 10), "hopper-rand-params": (40, 10)}[name]


# ---------------------------------------------------------------------- task lists
@pytest.mark.parametrize("name", SUITE)
def test_task_counts_and_splits(name):
    meta = make_env(name).unwrapped
    n_train, n_test = _pearl_counts(name)
    assert (meta.num_train_tasks, meta.num_test_tasks, meta.num_validation_tasks) == (n_train, n_test, 10)
    assert meta.train_task_ids == list(range(n_train))
    assert meta.test_task_ids == list(range(n_train, n_train + n_test))
    assert meta.validation_task_ids == list(range(n_train + n_test, n_train + n_test + 10))
    assert len(meta.tasks) == n_train + n_test + 10
    np.testing.assert_array_equal(make_env(name).unwrapped.tasks, meta.tasks)  # a fixed list, rebuilt the same


@pytest.mark.parametrize("name, values", [("cheetah-dir", [-1.0, 1.0]), ("ant-dir", [0.0, np.pi])])
def test_two_task_families_train_and_test_on_the_same_tasks(name, values):
    tasks = make_env(name).unwrapped.tasks[:, 0]
    np.testing.assert_array_equal(tasks[:4], values + values)
    picks = np.random.RandomState(4242).randint(2, size=10)
    np.testing.assert_array_equal(tasks[4:], np.array(values)[picks])
    assert set(picks) == {0, 1}  # validation evaluates both directions


def test_ant_goals_are_uniform_in_the_disc_of_radius_3():
    tasks = make_env("ant-goal").unwrapped.tasks

    def expected(count, seed):
        rng = np.random.RandomState(seed)
        angle = rng.rand(count) * 2 * np.pi
        radius = 3 * rng.rand(count) ** 0.5
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)

    np.testing.assert_array_equal(tasks, np.concatenate([expected(180, 1337), expected(10, 4242)]))
    assert np.linalg.norm(tasks, axis=1).max() <= 3.0
    _assert_disjoint(tasks)


def test_humanoid_directions():
    tasks = make_env("humanoid-dir").unwrapped.tasks[:, 0]
    np.testing.assert_array_equal(tasks[:130], np.random.RandomState(1337).uniform(0, 2 * np.pi, size=130))
    np.testing.assert_array_equal(tasks[130:], np.random.RandomState(4242).uniform(0, 2 * np.pi, size=10))
    _assert_disjoint(tasks[:, None])


def _assert_disjoint(tasks):
    distances = np.abs(tasks[:, None, :] - tasks[None, :, :]).max(axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 1e-9


def test_task_lists_do_not_touch_global_numpy_state():
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    for name in SUITE:
        make_env(name)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# ---------------------------------------------------------------------- randomised physics
RAND_PARAMS = [("walker-rand-params", Walker2dEnv), ("hopper-rand-params", HopperEnv)]
SCALED_ARRAYS = [("body_mass", 1.5), ("body_inertia", 1.5), ("dof_damping", 1.3), ("geom_friction", 1.5)]


@pytest.mark.parametrize("name, gymnasium_env", RAND_PARAMS)
def test_physics_scaled_as_pearl_draws_it(name, gymnasium_env):
    meta = make_env(name).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nominal = gymnasium_env().unwrapped.model   # an independent, unscaled copy of the same model

    def exponents(seed, count):
        rng = np.random.RandomState(seed)   # per task: every array, each element its own uniform(-3, 3)
        return [{array: rng.uniform(-3.0, 3.0, size=getattr(nominal, array).shape) for array, _ in SCALED_ARRAYS}
                for _ in range(count)]

    draws = exponents(1337, 50) + exponents(4242, 10)
    for task in (0, 7, 45, 59):
        meta.reset_task(task)
        for array, base in SCALED_ARRAYS:
            np.testing.assert_allclose(getattr(meta.model, array), getattr(nominal, array) * base ** draws[task][array],
                                       rtol=1e-12, atol=0)
        total = (nominal.body_mass * 1.5 ** draws[task]["body_mass"]).sum() / nominal.body_mass.sum()
        assert meta.tasks[task, 0] == pytest.approx(math.log(total, 1.5), abs=1e-12)
    assert np.abs(meta.tasks[:, 1:]).max() <= 3.0
    _assert_disjoint(meta.tasks)


@pytest.mark.parametrize("name", ["walker-rand-params", "hopper-rand-params"])
def test_a_task_changes_the_dynamics_and_switching_back_restores_them(name):
    env = make_env(name)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(25,) + env.action_space.shape)

    def rollout(task):
        env.unwrapped.reset_task(task)
        obs = [env.reset(seed=5)[0]]
        obs += [env.step(action)[0] for action in actions]
        return np.array(obs)

    first, other, again = rollout(3), rollout(30), rollout(3)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[1:], other[1:])
    np.testing.assert_array_equal(first[0], other[0])  # the same start: the task changes the physics only


# ---------------------------------------------------------------------- rewards, recomputed from the state
def _steps(env, count=40, seed=0):
    """``(meta, action, before, reward, terminated, info)`` for ``count`` steps of random actions, resetting at the end
    of an episode; ``before`` is a copy of ``data`` before the step."""
    meta, rng = env.unwrapped, np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(count):
        action = rng.uniform(-1, 1, size=env.action_space.shape)
        before = {"qpos": meta.data.qpos.copy(), "xpos": meta.data.xpos.copy(), "xipos": meta.data.xipos.copy()}
        _, reward, terminated, truncated, info = env.step(action)
        yield meta, action, before, reward, terminated, info
        if terminated or truncated:
            env.reset()


def _contact_cost(data):
    return 5e-4 * np.sum(np.clip(data.cfrc_ext, -1.0, 1.0) ** 2)


@pytest.mark.parametrize("task", [0, 1])
def test_cheetah_dir_reward(task):
    env = make_env("cheetah-dir", seed=1)
    env.unwrapped.reset_task(task)
    direction = [-1.0, 1.0][task]
    for meta, action, before, reward, terminated, _ in _steps(env):
        velocity = (meta.data.qpos[0] - before["qpos"][0]) / 0.05
        assert reward == pytest.approx(direction * velocity - 0.05 * np.sum(action ** 2), abs=1e-9)
        assert not terminated


@pytest.mark.parametrize("task", [0, 1])
def test_ant_dir_reward_and_termination(task):
    env = make_env("ant-dir", seed=2)
    env.unwrapped.reset_task(task)
    angle = [0.0, np.pi][task]
    torso = mujoco.mj_name2id(env.unwrapped.model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    for meta, action, before, reward, terminated, _ in _steps(env, count=60):
        velocity = (meta.data.xpos[torso, :2] - before["xpos"][torso, :2]) / 0.05
        expected = (velocity @ [np.cos(angle), np.sin(angle)] + 1.0 - 0.5 * np.sum(action ** 2)
                    - _contact_cost(meta.data))
        assert reward == pytest.approx(expected, abs=1e-9)
        z = meta.data.qpos[2]
        assert terminated == (not (0.2 <= z <= 1.0))


def test_ant_goal_reward():
    env = make_env("ant-goal", seed=3)
    env.unwrapped.reset_task(155)
    goal = env.unwrapped.tasks[155]
    torso = mujoco.mj_name2id(env.unwrapped.model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    for meta, action, _, reward, terminated, _ in _steps(env):
        expected = (-np.abs(meta.data.xpos[torso, :2] - goal).sum() - 0.1 * np.sum(action ** 2)
                    - _contact_cost(meta.data))
        assert reward == pytest.approx(expected, abs=1e-9)
        assert not terminated
    obs = env.reset()[0]
    np.testing.assert_array_equal(obs[:2], env.unwrapped.data.qpos[:2])  # the position is observed


def test_humanoid_dir_reward_and_termination():
    env = make_env("humanoid-dir", seed=4)
    env.unwrapped.reset_task(7)
    angle = env.unwrapped.tasks[7, 0]
    mass = env.unwrapped.model.body_mass[:, None]
    for meta, action, before, reward, terminated, _ in _steps(env, count=60):
        ctrl = 0.4 * action       # the agent's [-1, 1] onto the humanoid's [-0.4, 0.4]
        centre_before = (mass * before["xipos"]).sum(axis=0) / mass.sum()
        centre_after = (mass * meta.data.xipos).sum(axis=0) / mass.sum()
        displacement = (centre_after - centre_before)[:2]
        expected = (0.25 * displacement @ [np.cos(angle), np.sin(angle)] / 0.003 + 5.0 - 0.1 * np.sum(ctrl ** 2)
                    - min(5e-7 * np.sum(meta.data.cfrc_ext ** 2), 10.0))
        assert reward == pytest.approx(expected, abs=1e-6)
        assert terminated == (not (1.0 < meta.data.qpos[2] < 2.0))


@pytest.mark.parametrize("name", ["walker-rand-params", "hopper-rand-params"])
def test_rand_params_reward_and_termination(name):
    env = make_env(name, seed=5)
    env.unwrapped.reset_task(12)
    saw_termination = False
    for meta, action, before, reward, terminated, _ in _steps(env, count=150):
        velocity = (meta.data.qpos[0] - before["qpos"][0]) / 0.008
        assert reward == pytest.approx(velocity + 1.0 - 1e-3 * np.sum(action ** 2), abs=1e-9)
        z, angle = meta.data.qpos[1:3]
        if name == "walker-rand-params":
            healthy = 0.8 < z < 2.0 and -1.0 < angle < 1.0
        else:
            state = np.concatenate([meta.data.qpos, meta.data.qvel])
            healthy = np.all(np.abs(state[2:]) < 100) and z > 0.7 and abs(angle) < 0.2
        assert terminated == (not healthy)
        saw_termination |= terminated
    assert saw_termination  # random actions topple them: the check above saw both outcomes


# ---------------------------------------------------------------------- shapes, time limits, gymnasium
@pytest.mark.parametrize("name, obs_dim, act_dim, dt", [
    ("cheetah-dir", 20, 6, 0.05), ("ant-dir", 27, 8, 0.05), ("ant-goal", 107, 8, 0.05),
    ("humanoid-dir", 348, 17, 0.015), ("walker-rand-params", 17, 6, 0.008), ("hopper-rand-params", 11, 3, 0.008)])
def test_spaces_and_time_limit(name, obs_dim, act_dim, dt):
    env = make_env(name, seed=0)
    obs, info = env.reset()
    assert obs.shape == env.observation_space.shape == (obs_dim,)
    assert env.action_space.shape == (act_dim,)
    assert env.unwrapped.dt == pytest.approx(dt)
    np.testing.assert_array_equal(info["task"], env.unwrapped.tasks[0])
    assert env.spec.max_episode_steps == ENV_SPECS[name].max_episode_steps == 200


@pytest.mark.parametrize("name, ends_early", [
    ("point-robot", False), ("sparse-point-robot", False), ("cheetah-vel", False), ("cheetah-dir", False),
    ("ant-goal", False), ("ant-dir", True), ("humanoid-dir", True), ("walker-rand-params", True),
    ("hopper-rand-params", True)])
def test_environments_say_whether_their_episodes_end_early(name, ends_early):
    """The flag decides how long a meta-test trial can be (an in-context agent's context length): an environment
    that says no never ends an episode early, under random actions here."""
    env = make_env(name, seed=0)
    assert env.unwrapped.episodes_end_early is ends_early
    if not ends_early:
        env.reset()
        for _ in range(400):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            assert not terminated
            if truncated:
                env.reset()


@pytest.mark.parametrize("name", SUITE)
def test_gymnasium_env_checker_passes(name):
    """(The three environments of the reference benchmark are checked in test_envs.py.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # infinite observation bounds are legitimate here
        check_env(make_env(name).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", SUITE)
def test_protocols_follow_pearls_configs(name):
    protocol = protocol_for(name, "benchmark")
    assert protocol.num_iterations == 20 and protocol.batch_size == 256 and protocol.discount == 0.99
    assert protocol.num_steps_per_eval == 600 and protocol.num_exp_traj_eval == 2 and protocol.reward_scale == 5.0
    assert protocol.use_next_obs_in_context == name.endswith("rand-params")
    assert ENV_SPECS[name].runs_by_default is False


# ---------------------------------------------------------------------- every method trains on every environment
SMOKE_CELLS = [pytest.param(env, algo, marks=pytest.mark.skipif(
                   (env, algo) not in DEFAULT_SMOKE_CELLS and not RUN_SLOW, reason="slow: INCONTEXT_SLOW_TESTS=1"))
               for env in SUITE for algo in METHODS]


def test_the_smoke_runs_cover_every_method_that_runs_on_the_suite():
    runnable = {algo for algo in ALGORITHMS if all(unsupported_reason(algo, env) is None for env in SUITE)}
    assert set(METHODS) == runnable and len(SMOKE_CELLS) == len(SUITE) * len(METHODS)
    assert DEFAULT_SMOKE_CELLS <= {(env, algo) for env in SUITE for algo in METHODS}


@pytest.mark.parametrize("env, algo", SMOKE_CELLS)
def test_every_method_trains_at_the_smoke_tier(tmp_path, env, algo):
    run_dir = train_smoke_cell(tmp_path / "run", env, algo)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["env"] == env and results["algo"] == algo
    assert math.isfinite(results["meta_test_return"]) and math.isfinite(results["final_eval"]["validation_return"])
    assert results["grad_steps"] == 2 * 3
    # the protocol's environment steps exactly, even where a falling body ends episodes early
    p = protocol_for(env, "smoke")
    per_task = p.num_steps_prior + p.num_steps_posterior + p.num_extra_rl_steps_posterior
    budget = _pearl_counts(env)[0] * p.num_initial_steps + p.num_iterations * p.num_tasks_sample * per_task
    assert results["env_steps"] == budget
