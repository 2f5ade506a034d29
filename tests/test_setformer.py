"""setformer: permutation invariance, online == batched inference, goal-revealing contexts, loss switches,
attention weights, and Thompson-sampling exploration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algos.core.buffers import sample_rl_batch
from algos.setformer import Acting, ExplorationConfig, SetFormerAgent, SetFormerConfig
from tests.conftest import make_trainer

OBS, ACT = 2, 2


def make_agent(**overrides) -> SetFormerAgent:
    torch.manual_seed(0)
    config = SetFormerConfig(hidden_dim=32, **overrides)
    return SetFormerAgent(OBS, ACT, config, num_train_tasks=6)


def point_robot_transitions(goal, n, seed):
    """Random point-robot transitions toward nothing in particular, rewarded by distance to ``goal``."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(n, 2))
    actions = rng.uniform(-1, 1, size=(n, 2))
    next_obs = obs + 0.1 * actions
    rewards = -np.linalg.norm(next_obs - np.asarray(goal), axis=1)
    return obs, actions, rewards, next_obs


def as_context(obs, actions, rewards):
    return torch.as_tensor(np.concatenate([obs, actions, rewards[:, None]], 1), dtype=torch.float32)[None]


def test_z_is_permutation_invariant():
    agent = make_agent()
    context = torch.randn(3, 40, OBS + ACT + 1)
    with torch.no_grad():
        z = agent.infer_posterior(context).clone()
        shuffled = agent.infer_posterior(context[:, torch.randperm(40)])
    assert torch.allclose(z, shuffled, atol=1e-5)


def test_online_context_equals_batched_inference():
    agent = make_agent()
    obs, actions, rewards, next_obs = point_robot_transitions((0.5, 0.5), 30, seed=1)
    agent.clear_context()
    for t in range(30):
        agent.update_context((obs[t], actions[t], rewards[t], next_obs[t], False, {}))
    agent.adapt()
    online = agent.encoder_z.clone()  # the encoder's reading (the acting z may be a hypothesis, see below)
    assert agent.context.shape == (1, 30, OBS + ACT + 1)
    with torch.no_grad():
        batched = agent.infer_posterior(as_context(obs, actions, rewards))
    assert torch.allclose(online, batched, atol=1e-5)


def test_update_context_preallocates_and_grows_without_rebuilding_tokens():
    agent = make_agent()
    agent.clear_context()
    storage = agent._tokens._data
    obs, actions, rewards, next_obs = point_robot_transitions((0, 0), 300, seed=2)
    for t in range(10):
        agent.update_context((obs[t], actions[t], rewards[t], next_obs[t], False, {}))
    assert agent._tokens._data is storage  # appended in place
    for t in range(10, 300):
        agent.update_context((obs[t], actions[t], rewards[t], next_obs[t], False, {}))
    assert agent._tokens.length == 300 and agent._tokens._data.shape[1] >= 300


def test_attention_weights_shape_and_normalisation():
    agent = make_agent(num_heads=4, num_seeds=2)
    with torch.no_grad():
        agent.infer_posterior(torch.randn(3, 25, OBS + ACT + 1))
    weights = agent.attention_weights
    assert weights.shape == (3, 4, 2, 25)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 2), atol=1e-5)


def test_context_revealing_the_goal_moves_z_and_reward_prediction():
    """Train encoder + reward head on two goals; a context from goal A must make the head predict a higher reward
    at A than a context from goal B does."""
    agent = make_agent(num_blocks=1)
    goal_a, goal_b = np.array([0.7, 0.7]), np.array([-0.7, -0.7])
    params = [*agent.context_encoder.parameters(), *agent.reward_head.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    for step in range(600):
        contexts, queries, targets = [], [], []
        for g, goal in enumerate((goal_a, goal_b)):
            obs, actions, rewards, _ = point_robot_transitions(goal, 24, seed=1000 * step + g)
            contexts.append(as_context(obs, actions, rewards))
            q_obs, q_actions, q_rewards, _ = point_robot_transitions(goal, 32, seed=10**6 + 1000 * step + g)
            queries.append(torch.as_tensor(np.concatenate([q_obs, q_actions], 1), dtype=torch.float32))
            targets.append(torch.as_tensor(q_rewards, dtype=torch.float32)[:, None])
        z = agent.infer_posterior(torch.cat(contexts))                                      # (2, latent)
        inputs = torch.cat([torch.stack(queries), z[:, None].expand(-1, 32, -1)], -1)
        loss = F.mse_loss(agent.reward_head(inputs), torch.stack(targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z_a = agent.infer_posterior(as_context(*point_robot_transitions(goal_a, 24, seed=7)[:3])).clone()
        z_b = agent.infer_posterior(as_context(*point_robot_transitions(goal_b, 24, seed=8)[:3])).clone()
        at_a = torch.tensor([[0.6, 0.6, 1.0, 1.0]])
        reward_a_given_a = agent.reward_head(torch.cat([at_a, z_a], -1)).item()
        reward_a_given_b = agent.reward_head(torch.cat([at_a, z_b], -1)).item()
    assert (z_a - z_b).norm() > 0.1
    true_a = -np.linalg.norm(np.array([0.7, 0.7]) - goal_a)
    true_b = -np.linalg.norm(np.array([0.7, 0.7]) - goal_b)
    assert reward_a_given_a > reward_a_given_b + 1.0
    assert abs(reward_a_given_a - true_a) < 0.3 and abs(reward_a_given_b - true_b) < 0.6


@pytest.mark.parametrize("switch,removed", [("aux.reward=0", "train/reward_head_loss"),
                                            ("aux.next_state=0", "train/next_state_head_loss"),
                                            ("aux.align=0", "train/align_loss")])
def test_switching_an_auxiliary_loss_off_removes_its_term(switch, removed, tmp_path):
    full = make_trainer("point-robot", tmp_path / "full", algo="setformer", overrides=["num_iterations=1"])
    full.algorithm.collect_initial_data()
    full_scalars = full.algorithm.train_iteration(0)
    ablated = make_trainer("point-robot", tmp_path / "ablated", algo="setformer",
                           overrides=["num_iterations=1", switch])
    ablated.algorithm.collect_initial_data()
    ablated_scalars = ablated.algorithm.train_iteration(0)
    assert removed in full_scalars and full_scalars[removed] > 0
    assert removed not in ablated_scalars
    assert "train/qf_loss" in ablated_scalars


@pytest.mark.parametrize("shapes", [True, False])
def test_a_detached_reward_head_trains_but_shapes_no_latent(tmp_path, shapes):
    trainer = make_trainer("point-robot", tmp_path / str(shapes), algo="setformer",
                           overrides=[f"aux.reward_shapes_z={str(shapes).lower()}", "bf16=false"])
    algorithm, agent = trainer.algorithm, trainer.algorithm.agent
    algorithm.collect_initial_data()
    tasks = algorithm.rng.choice(algorithm.train_tasks, size=algorithm.protocol.meta_batch)
    context = algorithm.training_context(algorithm.sample_task_context(tasks))
    batch = sample_rl_batch(algorithm.rl_buffer, tasks, algorithm.protocol.batch_size, algorithm.rng,
                            context_uses_sparse_reward=False, critic_uses_dense_reward=True)
    task_z = agent.infer_posterior(context)
    batch_z = algorithm.batch_latents(tasks, task_z, algorithm.protocol.batch_size)
    losses = algorithm.encoder_losses(tasks, context, task_z, batch_z, batch)
    agent.zero_grad(set_to_none=True)
    losses["reward_head_loss"].backward()
    head_grads = [p.grad for p in agent.reward_head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in head_grads)  # the head learns either way
    latent_grads = [p.grad for p in [*agent.context_encoder.parameters(), agent.task_embeddings]]
    if shapes:
        assert all(g is not None for g in latent_grads) and agent.task_embeddings.grad.abs().sum() > 0
    else:
        assert all(g is None for g in latent_grads)


def test_thompson_sampling_acts_on_hypotheses_and_drops_falsified_ones():
    agent = make_agent()
    agent.clear_context()
    assert agent.acting is Acting.EXPLORING
    assert any(torch.equal(agent.z[0], h) for h in agent.hypotheses)  # acting as one hypothesis
    agent = linear_hypothesis_agent()
    latent_dim = agent.latent_dim
    agent.clear_context()
    for _ in range(3):
        agent.update_context((np.zeros(2), np.zeros(2), 4.0, np.zeros(2), False, {}))
    belief = torch.softmax(agent.belief.log_likelihood, 0)
    assert int(belief.argmax()) == 4 and belief[4] > 0.99
    assert agent.belief.current == 4            # falsified hypotheses were dropped within the episode
    assert torch.equal(agent.z[0], agent.embedding(4))
    agent.end_episode()
    assert agent.belief.current == 4            # the belief is concentrated: the next episode commits to it again
    assert agent.acting is Acting.EXPLORING
    agent.adapt()
    # adapt() ends exploration; the encoder's untrained reading predicts reward z[0] != 4, which the context refutes,
    # so the fallback acts on the best hypothesis instead, and no episode's end redraws it
    assert agent.acting is Acting.ON_HYPOTHESIS and agent.encoder_z[0, 0] != 4.0
    assert agent.z.shape == (1, latent_dim) and agent.belief.current == 4
    agent.end_episode()
    assert agent.acting is Acting.ON_HYPOTHESIS and torch.equal(agent.z[0], agent.embedding(4))


def linear_hypothesis_agent(**overrides) -> SetFormerAgent:
    """Hypothesis k predicts reward k everywhere: the reward head reads the first latent coordinate (raw latents:
    on the sphere all these embeddings would point the same way)."""
    agent = make_agent(**{"latent_norm": "none", **overrides})
    with torch.no_grad():
        embeddings = torch.zeros_like(agent.task_embeddings)
        embeddings[:, 0] = torch.arange(6, dtype=torch.float32)
        agent.task_embeddings.copy_(embeddings)
        agent.reward_head = torch.nn.Linear(OBS + ACT + agent.latent_dim, 1)
        agent.reward_head.weight.zero_()
        agent.reward_head.bias.zero_()
        agent.reward_head.weight[0, OBS + ACT] = 1.0
    return agent


@pytest.mark.parametrize("fallback", [True, False])
def test_adapt_falls_back_to_the_belief_when_the_context_refutes_the_encoder(fallback):
    agent = linear_hypothesis_agent(exploration=ExplorationConfig(fallback=fallback))
    agent.clear_context()
    for _ in range(5):
        agent.update_context((np.zeros(2), np.zeros(2), 4.0, np.zeros(2), False, {}))
    with torch.no_grad():
        agent.context_encoder.to_latent.bias.fill_(0.0)
        agent.context_encoder.to_latent.weight.fill_(0.0)  # the encoder reads z = 0: predicts reward 0, not 4
    agent.adapt()
    assert torch.equal(agent.encoder_z, torch.zeros(1, agent.latent_dim))
    if fallback:
        assert agent.acting is Acting.ON_HYPOTHESIS and agent.belief.current == 4
        assert torch.equal(agent.z[0], agent.embedding(4))
    else:
        assert agent.acting is Acting.ON_ENCODER and torch.equal(agent.z, agent.encoder_z)
    # once the encoder reads the context right, adapt() acts on its reading
    with torch.no_grad():
        agent.context_encoder.to_latent.bias[0] = 4.0
    agent.adapt()
    assert torch.equal(agent.z, agent.encoder_z) and agent.z[0, 0] == 4.0
    assert agent.acting is Acting.ON_ENCODER
    # new evidence against the encoder's reading (reward 2, predicted 4) switches to a live hypothesis, only with
    # the fallback
    for _ in range(3):
        agent.update_context((np.zeros(2), np.zeros(2), 2.0, np.zeros(2), False, {}))
    if fallback:
        assert agent.acting is Acting.ON_HYPOTHESIS
        assert agent.belief.current in (2, 3) and torch.equal(agent.z[0], agent.embedding(agent.belief.current))
    else:
        assert agent.acting is Acting.ON_ENCODER and torch.equal(agent.z, agent.encoder_z)



def test_a_given_latent_or_a_training_read_out_is_acted_on_as_it_is():
    """``act_on`` holds its latent whatever the context says; ``infer_posterior`` (training's read-out of sampled
    contexts) acts on the encoder's reading with no fallback watching it; ``clear_context`` explores again."""
    agent = linear_hypothesis_agent()
    agent.clear_context()
    agent.act_on(agent.embedding(2))
    for _ in range(3):  # reward 4 refutes hypothesis 2, which predicts 2
        agent.update_context((np.zeros(2), np.zeros(2), 4.0, np.zeros(2), False, {}))
    agent.end_episode()
    assert agent.acting is Acting.ON_TASK_EMBEDDING and torch.equal(agent.z[0], agent.embedding(2))
    agent.clear_context()
    with torch.no_grad():
        z = agent.infer_posterior(torch.zeros(1, 5, agent.context_dim)).clone()
    agent.update_context((np.zeros(2), np.zeros(2), 4.0, np.zeros(2), False, {}))
    agent.end_episode()
    assert agent.acting is Acting.ON_ENCODER and agent.encoder_log_likelihood is None and torch.equal(agent.z, z)
    agent.clear_context()
    assert agent.acting is Acting.EXPLORING

def test_collection_on_the_task_embedding_keeps_the_env_steps_and_acts_on_it(tmp_path):
    steps = {}
    for share in (0.0, 1.0):
        trainer = make_trainer("point-robot", tmp_path / str(share), "setformer",
                               overrides=[f"embedding_collection_fraction={share}"])
        algorithm = trainer.algorithm
        acted_on = []
        original = algorithm.collect

        def spy(task, num_samples, update_posterior, add_to_enc_buffer):
            acted_on.append(algorithm.agent.collecting_on_task)
            collected = original(task, num_samples, update_posterior, add_to_enc_buffer)
            if algorithm.agent.collecting_on_task is not None:  # z stayed on e_task through every such episode
                assert not update_posterior and algorithm.agent.acting is Acting.ON_TASK_EMBEDDING
                assert torch.equal(algorithm.agent.z[0], algorithm.agent.embedding(task).detach())
            return collected

        algorithm.collect = spy
        before = algorithm.env_steps
        algorithm.collect_iteration_data()
        steps[share] = algorithm.env_steps - before
        assert algorithm.agent.collecting_on_task is None
        assert any(t is not None for t in acted_on) == (share > 0)
    assert steps[0.0] == steps[1.0] > 0


def test_tasks_whose_data_never_showed_a_reward_are_not_hypotheses(tmp_path):
    agent = linear_hypothesis_agent()
    agent.hypothesis_usable[4] = False       # task 4's data never showed a reward
    agent.clear_context()
    for _ in range(3):
        agent.update_context((np.zeros(2), np.zeros(2), 4.0, np.zeros(2), False, {}))
    for _ in range(20):
        agent.end_episode()
        assert agent.belief.current in (3, 5)    # the best usable ones; 4 would fit best but is no hypothesis
    # the algorithm derives the mask from the replay data: sparse rewards seen per training task
    trainer = make_trainer("sparse-point-robot", tmp_path, "setformer")
    algorithm = trainer.algorithm
    algorithm.collect_initial_data()
    sparse = algorithm.rl_buffer.sparse_rewards
    expected = [bool(np.mean(sparse[t, : algorithm.rl_buffer.sizes[t]] != 0) >= 0.01) for t in algorithm.train_tasks]
    assert algorithm.agent.hypothesis_usable.tolist() == expected
    with torch.no_grad():  # pretend task 0's data shows a reward at every step
        algorithm.rl_buffer.sparse_rewards[0] = 0.5
    algorithm.refresh_hypothesis_set()
    assert bool(algorithm.agent.hypothesis_usable[0])


@pytest.mark.parametrize("how", ["sphere", "tanh", "none"])
def test_latents_and_embeddings_are_normalised_alike(how):
    agent = make_agent(latent_norm=how)
    context = torch.randn(3, 7, agent.context_dim) * 100.0
    z = agent.infer_posterior(context)
    embeddings = agent.embedding()
    if how == "sphere":
        expected = torch.full((3,), agent.latent_dim ** 0.5)
        assert torch.allclose(z.norm(dim=-1), expected, atol=1e-4)
        assert torch.allclose(embeddings.norm(dim=-1), torch.full((6,), agent.latent_dim ** 0.5), atol=1e-4)
    elif how == "tanh":
        assert z.abs().max() < 1 and embeddings.abs().max() < 1
    else:  # left as the encoder and the table made them: neither on the sphere nor squashed
        assert torch.equal(embeddings, agent.task_embeddings)
        assert z.abs().max() > 1
        assert not torch.allclose(z.norm(dim=-1), torch.full((3,), agent.latent_dim ** 0.5), atol=1e-2)
    assert torch.equal(agent.hypotheses, embeddings.detach())


def test_unknown_latent_norm_is_refused():
    from algos.core.config import ConfigError
    with pytest.raises(ConfigError, match="latent_norm"):
        SetFormerConfig(latent_norm="cube").validate()


def test_mean_pool_encoder_is_a_permutation_invariant_mean_with_uniform_weights():
    agent = make_agent(encoder_pooling="mean")
    assert not hasattr(agent.context_encoder, "blocks") and not hasattr(agent.context_encoder, "pooling")
    context = torch.randn(2, 9, agent.context_dim)
    z = agent.infer_posterior(context)
    assert torch.allclose(agent.infer_posterior(context[:, torch.randperm(9)]), z, atol=1e-5)
    assert agent.attention_weights.shape == (2, 1, 1, 9)
    assert torch.allclose(agent.attention_weights, torch.full((2, 1, 1, 9), 1 / 9))
    tokens = agent.context_encoder.embed(context)
    raw = agent.context_encoder.to_latent(tokens.mean(dim=1))
    assert torch.allclose(z, F.normalize(raw, dim=-1) * agent.latent_dim ** 0.5, atol=1e-5)


def test_environment_defaults_apply_per_environment_and_yield_to_an_override(monkeypatch):
    from algos.core.trainer import build_config
    from algos.setformer import SetFormer

    assert SetFormerConfig().lr == 3e-4  # the references' lr
    assert SetFormerConfig().encoder_lr == 0.0  # the encoder follows agent.lr
    assert SetFormerConfig().learn_temperature is False
    # as a selected grid point is written for one environment; the others keep the references' settings
    monkeypatch.setattr(SetFormer, "env_defaults", {"cheetah-vel": {"lr": 1e-3, "encoder_lr": 3e-4,
                                                                    "learn_temperature": True}})
    for env, lr, encoder_lr, learned in (("point-robot", 3e-4, 0.0, False), ("sparse-point-robot", 3e-4, 0.0, False),
                                         ("cheetah-vel", 1e-3, 3e-4, True)):
        for tier in ("quick", "benchmark"):
            agent = build_config(env, "setformer", tier, 0).agent
            assert (agent.lr, agent.encoder_lr, agent.learn_temperature) == (lr, encoder_lr, learned)
        overridden = build_config(env, "setformer", "quick", 0,
                                  ["lr=0.0005", "encoder_lr=0.0002", f"learn_temperature={not learned}"]).agent
        assert (overridden.lr, overridden.encoder_lr, overridden.learn_temperature) == (0.0005, 0.0002, not learned)
