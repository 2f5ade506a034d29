"""Environments: rewards, dynamics, observations, resets, task lists, action scaling, gymnasium integration."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs_glue
from envs_glue import ENV_SPECS, ScaledActionWrapper, env_spec, make_env

ALL_ENVS = ["point-robot", "sparse-point-robot", "cheetah-vel"]


# ---------------------------------------------------------------------- task lists (docs/PROTOCOL.md#task-lists)
def expected_point_goals() -> np.ndarray:
    rng = np.random.RandomState(1337)
    goals = []
    for _ in range(50):
        x = rng.uniform(-1.0, 1.0)
        y = rng.uniform(-1.0, 1.0)
        goals.append([x, y])
    return np.array(goals)


def expected_sparse_goals() -> np.ndarray:
    angles = np.linspace(0, np.pi, 50)
    goals = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    np.random.RandomState(1337).shuffle(goals)
    return goals


def expected_cheetah_velocities() -> np.ndarray:
    return np.random.RandomState(1337).uniform(0, 3, size=40)


@pytest.mark.parametrize("name, expected, n_train, n_test", [
    ("point-robot", expected_point_goals(), 40, 10),
    ("sparse-point-robot", expected_sparse_goals(), 40, 10),
    ("cheetah-vel", expected_cheetah_velocities()[:, None], 30, 10),
])
def test_task_lists_match_the_protocol(name, expected, n_train, n_test):
    env = make_env(name)
    meta = env.unwrapped
    # train and test exactly as the reference's lists; the validation tasks come after them
    np.testing.assert_array_equal(np.asarray(meta.tasks)[:len(expected)], expected)
    assert meta.train_task_ids == list(range(n_train))
    assert meta.test_task_ids == list(range(len(expected) - n_test, len(expected)))
    assert meta.validation_task_ids == list(range(len(expected), len(expected) + 10)) == meta.task_ids("validation")
    assert len(meta.tasks) == len(expected) + 10
    assert (meta.num_train_tasks, meta.num_test_tasks) == (n_train, n_test)
    for task in (0, meta.test_task_ids[0], meta.test_task_ids[-1]):
        meta.reset_task(task)
        np.testing.assert_array_equal(meta.task, expected[task])


def test_task_lists_pinned_literals():
    """Literal values, so a silent change of the generation (or of numpy's stream) is caught."""
    point = make_env("point-robot").unwrapped.tasks
    np.testing.assert_allclose(point[0], [-0.4759506499688366, -0.6826320556910688], rtol=0, atol=1e-12)
    np.testing.assert_allclose(point[40], [0.4478957959728618, 0.5860460652583859], rtol=0, atol=1e-12)
    np.testing.assert_allclose(point[49], [0.02141879193245, -0.7491940078235533], rtol=0, atol=1e-12)

    sparse = make_env("sparse-point-robot").unwrapped.tasks
    np.testing.assert_allclose(sparse[0], [1.0, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparse[40], [0.8713187041233894, 0.49071755200393785], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparse[49], [0.09602302590768189, 0.9953791129491982], rtol=0, atol=1e-12)
    # every goal (validation ones too) on the upper unit half-circle, all 60 distinct
    np.testing.assert_allclose(np.linalg.norm(sparse, axis=1), 1.0, atol=1e-12)
    assert np.all(sparse[:, 1] >= 0) and len(np.unique(sparse, axis=0)) == 60

    cheetah = make_env("cheetah-vel").unwrapped.tasks[:, 0]
    np.testing.assert_allclose(cheetah[[0, 30, 39]], [0.7860740250467451, 0.5557528352161346, 0.37990433907251275],
                               rtol=0, atol=1e-12)
    assert np.all((cheetah >= 0) & (cheetah < 3))


@pytest.mark.parametrize("name", ALL_ENVS)
def test_validation_tasks_come_from_the_training_distribution_with_their_own_seed(name):
    meta = make_env(name).unwrapped
    tasks = np.asarray(meta.tasks, dtype=np.float64)
    validation = tasks[meta.validation_task_ids]
    others = tasks[meta.train_task_ids + meta.test_task_ids]
    # disjoint from the train and test lists
    assert min(np.abs(others - v).max(axis=1).min() for v in validation) > 1e-6
    rng = np.random.RandomState(4242)
    if name == "point-robot":
        expected = np.array([[rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)] for _ in range(10)])
    elif name == "sparse-point-robot":
        angles = rng.uniform(0.0, np.pi, size=10)
        expected = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:
        expected = rng.uniform(0.0, 3.0, size=10)[:, None]
    np.testing.assert_array_equal(validation, expected)
    # within the range the training tasks span
    assert np.all(validation.min(axis=0) >= others.min(axis=0) - 0.05)
    assert np.all(validation.max(axis=0) <= others.max(axis=0) + 0.05)
    with pytest.raises(ValueError, match="unknown task split"):
        meta.task_ids("val")


def test_task_lists_do_not_touch_global_numpy_state():
    np.random.seed(7)
    before = np.random.get_state()[1].copy(), np.random.get_state()[2]
    for name in ALL_ENVS:
        make_env(name)
    after = np.random.get_state()[1], np.random.get_state()[2]
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]


# ---------------------------------------------------------------------- point robots
def test_point_robot_reward_and_dynamics():
    env = make_env("point-robot", seed=3)
    meta = env.unwrapped
    rng = np.random.default_rng(0)
    for task in (0, 17, 45):
        meta.reset_task(task)
        goal = meta.tasks[task]
        obs, info = env.reset()
        np.testing.assert_array_equal(info["task"], goal)
        position = np.array(obs, dtype=np.float64)
        for _ in range(20):
            action = rng.uniform(-1.5, 1.5, size=2)   # includes out-of-range components
            obs, reward, terminated, truncated, _ = env.step(action)
            position = position + 0.1 * np.clip(action, -1, 1)
            # the native box is float32, so 0.1 is 0.1 to float32 precision
            np.testing.assert_allclose(obs, position, atol=1e-7)
            assert reward == pytest.approx(-np.linalg.norm(position - goal), abs=1e-7)
            assert terminated is False
        assert truncated is True  # the registered TimeLimit ends the episode after 20 steps


def test_point_robot_reset_distribution():
    env = make_env("point-robot", seed=11)
    starts = np.array([env.reset()[0] for _ in range(400)])
    assert starts.shape == (400, 2)
    assert np.all(np.abs(starts) <= 1.0)
    # uniform in the square, not a point or a sub-box
    assert starts.min(axis=0).max() < -0.9 and starts.max(axis=0).min() > 0.9
    assert np.all(np.abs(starts.mean(axis=0)) < 0.15)


def test_point_robot_seeded_resets_are_reproducible():
    a, b = make_env("point-robot", seed=5), make_env("point-robot", seed=5)
    np.testing.assert_array_equal([a.reset()[0] for _ in range(5)], [b.reset()[0] for _ in range(5)])
    c = make_env("point-robot", seed=6)
    assert not np.allclose(a.reset()[0], c.reset()[0])


def point_robot_target(policy: str, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Where ``policy`` steers the point robot: nowhere, the origin, or the goal it is handed."""
    return {"stand still": position, "head for the origin": np.zeros(2), "oracle": goal}[policy]


def point_robot_returns(starts: np.ndarray, goals: np.ndarray, policy: str) -> np.ndarray:
    """Episode returns of ``policy`` from ``starts (n, 2)`` towards ``goals (n, 2)``, in numpy: each step moves every
    coordinate by at most 0.1 and is rewarded ``-||position - goal||`` after the move."""
    position, total = starts.copy(), np.zeros(len(starts))
    for _ in range(20):
        position = position + np.clip(point_robot_target(policy, position, goals) - position, -0.1, 0.1)
        total -= np.linalg.norm(position - goals, axis=1)
    return total


def test_point_robot_reference_returns_quoted_by_the_protocol():
    """docs/PROTOCOL.md#known-optima-and-limits and the tables' notes quote, on the test goals from random starts: the
    known-goal optimum -4.60, a 10-task mean's std of about 1.2 from the starts alone, standing still -19.67 and
    heading for the origin -14.08. The numpy rollout is checked against the environment first."""
    policies = {"stand still": -19.67, "head for the origin": -14.08, "oracle": -4.60}
    env = make_env("point-robot", seed=2)
    meta = env.unwrapped
    for policy in policies:
        for task in meta.test_task_ids[:3]:
            meta.reset_task(task)
            start, _ = env.reset()
            position, goal, episode_return = np.array(start, dtype=np.float64), meta.tasks[task], 0.0
            for _ in range(20):
                target = point_robot_target(policy, position, goal)
                obs, reward, *_ = env.step(np.clip((target - position) / 0.1, -1, 1))
                position, episode_return = np.array(obs, dtype=np.float64), episode_return + reward
            replayed = point_robot_returns(np.array(start, dtype=np.float64)[None], goal[None], policy)[0]
            assert episode_return == pytest.approx(replayed, abs=1e-4)
    # the figures: 100,000 random starts on each test goal (standard error of a mean below 0.01)
    rng = np.random.default_rng(0)
    test_goals = meta.tasks[meta.test_task_ids]
    goals = np.repeat(test_goals, 100_000, axis=0)
    starts = rng.uniform(-1.0, 1.0, size=goals.shape)
    returns = {policy: point_robot_returns(starts, goals, policy) for policy in policies}
    for policy, quoted in policies.items():
        assert returns[policy].mean() == pytest.approx(quoted, abs=0.03), policy
    per_task_variance = returns["oracle"].reshape(len(test_goals), -1).var(axis=1)
    assert np.sqrt(per_task_variance.mean() / len(test_goals)) == pytest.approx(1.2, abs=0.1)


def test_sparse_point_robot_reset_at_origin_and_rewards():
    env = make_env("sparse-point-robot", seed=1)
    meta = env.unwrapped
    saw_inside = saw_outside = False
    for task in (0, 13, 49):
        meta.reset_task(task)
        goal = meta.tasks[task]
        for _ in range(3):
            obs, _ = env.reset()
            np.testing.assert_array_equal(obs, [0.0, 0.0])
        position = np.zeros(2)
        for _ in range(15):
            gap = goal - position
            action = np.clip(gap / 0.1, -1, 1) * 0.9          # approach, slower than the oracle
            obs, reward, terminated, truncated, info = env.step(action)
            position = position + 0.1 * action
            np.testing.assert_allclose(obs, position, atol=1e-7)
            position = np.array(obs, dtype=np.float64)          # exact, for the threshold test below
            d = np.linalg.norm(position - goal)
            assert reward == pytest.approx(-d, abs=1e-12)       # step returns the dense reward
            expected_sparse = 1.0 - d if d <= 0.2 else 0.0
            assert info["sparse_reward"] == pytest.approx(expected_sparse, abs=1e-12)
            saw_inside |= d <= 0.2
            saw_outside |= d > 0.2
            assert not terminated
    assert saw_inside and saw_outside


def test_sparse_reward_threshold_boundary():
    from envs_glue.sparse_point_robot import sparsify
    assert sparsify(-0.2) == pytest.approx(0.8)
    assert sparsify(-0.2000001) == 0.0
    assert sparsify(-0.0) == 1.0
    assert sparsify(-0.5) == 0.0


# ---------------------------------------------------------------------- action scaling
@pytest.mark.parametrize("name", ["point-robot", "sparse-point-robot"])
def test_point_robot_action_scaling(name):
    env = make_env(name)
    assert isinstance(env, ScaledActionWrapper)
    assert env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.low, [-1, -1])
    np.testing.assert_array_equal(env.action_space.high, [1, 1])
    np.testing.assert_allclose(env.unwrapped.action_space.low, [-0.1, -0.1])
    np.testing.assert_allclose(env.unwrapped.action_space.high, [0.1, 0.1])
    np.testing.assert_allclose(env.action(np.array([1.0, -1.0])), [0.1, -0.1], atol=1e-12)
    np.testing.assert_allclose(env.action(np.array([0.5, 0.0])), [0.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(env.action(np.array([7.0, -3.0])), [0.1, -0.1], atol=1e-12)   # clipped
    np.testing.assert_allclose(env.action(np.array([-0.25, 0.75])), [-0.025, 0.075], atol=1e-12)


def test_scaled_action_wrapper_is_affine_on_asymmetric_box():
    class Asym(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(np.array([0.0, -2.0], dtype=np.float32), np.array([1.0, 6.0], dtype=np.float32))

    wrapped = ScaledActionWrapper(Asym())
    np.testing.assert_allclose(wrapped.action(np.array([-1.0, -1.0])), [0.0, -2.0])
    np.testing.assert_allclose(wrapped.action(np.array([1.0, 1.0])), [1.0, 6.0])
    np.testing.assert_allclose(wrapped.action(np.array([0.0, 0.5])), [0.5, 4.0])


def test_scaled_action_wrapper_rejects_unbounded_box():
    class Unbounded(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(-np.inf, np.inf, (2,))

    with pytest.raises(TypeError):
        ScaledActionWrapper(Unbounded())


# ---------------------------------------------------------------------- cheetah-vel
def test_cheetah_observation_and_reward():
    env = make_env("cheetah-vel", seed=2)
    meta = env.unwrapped
    assert meta.dt == pytest.approx(0.05) and meta.frame_skip == 5
    assert env.observation_space.shape == (20,) and env.action_space.shape == (6,)
    np.testing.assert_array_equal(env.action_space.low, -np.ones(6))
    meta.reset_task(33)
    goal = meta.tasks[33, 0]
    np.testing.assert_array_equal(meta.task, [goal])
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    for step in range(30):
        action = rng.uniform(-1, 1, size=6)
        x_before = float(meta.data.qpos[0])
        obs, reward, terminated, truncated, info = env.step(action)
        x_after = float(meta.data.qpos[0])
        v_x = (x_after - x_before) / 0.05
        # the cheetah's action box is [-1, 1], so the scaling is the identity
        expected = -abs(v_x - goal) - 0.05 * float(np.sum(action ** 2))
        assert reward == pytest.approx(expected, abs=1e-9)
        assert info["forward_velocity"] == pytest.approx(v_x, abs=1e-9)
        expected_obs = np.concatenate([meta.data.qpos[1:], meta.data.qvel, meta.data.body("torso").xpos])
        assert obs.shape == (20,)
        np.testing.assert_allclose(obs, expected_obs, atol=1e-12)
        assert not terminated and not truncated
    # the torso position is the body frame origin (xpos), not the inertial centre (xipos) nor subtree_com
    assert not np.allclose(obs[17:], meta.data.body("torso").xipos)
    assert not np.allclose(obs[17:], meta.data.subtree_com[meta.data.body("torso").id])


def test_cheetah_reset_noise_is_standard():
    env = make_env("cheetah-vel", seed=4)
    meta = env.unwrapped
    init_qpos, init_qvel = meta.init_qpos.copy(), meta.init_qvel.copy()
    qpos_devs, qvel_devs = [], []
    for _ in range(20):
        env.reset()
        qpos_devs.append(meta.data.qpos - init_qpos)
        qvel_devs.append(meta.data.qvel - init_qvel)
    qpos_devs, qvel_devs = np.array(qpos_devs), np.array(qvel_devs)
    assert np.all(np.abs(qpos_devs) <= 0.1 + 1e-12) and np.abs(qpos_devs).max() > 0.05   # uniform(-0.1, 0.1)
    assert 0.05 < qvel_devs.std() < 0.15                                                  # 0.1 * normal


def test_cheetah_truncates_after_200_steps():
    env = make_env("cheetah-vel", seed=0)
    env.reset()
    for step in range(200):
        _, _, terminated, truncated, _ = env.step(np.zeros(6))
        assert not terminated
        assert truncated == (step == 199)


# ---------------------------------------------------------------------- shapes and gymnasium integration
@pytest.mark.parametrize("name, obs_dim, act_dim, episode", [
    ("point-robot", 2, 2, 20), ("sparse-point-robot", 2, 2, 20), ("cheetah-vel", 20, 6, 200)])
def test_spaces_and_episode_lengths(name, obs_dim, act_dim, episode):
    env = make_env(name, seed=0)
    obs, _ = env.reset()
    assert env.observation_space.shape == (obs_dim,) and obs.shape == (obs_dim,)
    assert env.action_space.shape == (act_dim,)
    assert env.unwrapped.max_episode_steps == episode == env_spec(name).max_episode_steps
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("name", ALL_ENVS)
def test_gymnasium_env_checker_passes(name):
    env = make_env(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # infinite observation bounds are legitimate here
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", ALL_ENVS)
def test_registered_with_gymnasium(name):
    spec = ENV_SPECS[name]
    assert spec.gym_id in gym.registry
    env = gym.make(spec.gym_id)
    assert isinstance(env.unwrapped, envs_glue.MetaEnv)
    assert env.spec.max_episode_steps == spec.max_episode_steps
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    env.close()


def test_sparse_flag_of_specs():
    assert [ENV_SPECS[n].sparse_reward for n in ALL_ENVS] == [False, True, False]


@pytest.mark.parametrize("call", [env_spec, make_env])
def test_unknown_env_raises_value_error_naming_it(call):
    with pytest.raises(ValueError, match="no-such-env"):
        call("no-such-env")
