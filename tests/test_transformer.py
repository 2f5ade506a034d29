"""The in-context transformer: causal masking, its three attention paths agreeing, the belief it acts on equal to the
one it trains on, in-context collection, smoke runs on every environment and bit-identical resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from algos.core.buffers import sample_rl_sequences
from algos.core.io import load_checkpoint
from algos.core.sampler import collect_data, rollout
from algos.core.trainer import Trainer
from models.causal_transformer import CausalTransformer, explicit_attention, fused_causal_attention
from tests.conftest import make_trainer, read_metrics, strip_nondeterministic


@pytest.fixture
def model() -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(token_dim=7, dim=16, num_layers=2, num_heads=4, max_length=12).eval()


@pytest.mark.parametrize("need_weights", [False, True])
def test_an_output_does_not_change_when_later_tokens_change(model, need_weights):
    tokens = torch.randn(3, 10, 7)
    changed = tokens.clone()
    changed[:, 6:] = torch.randn(3, 4, 7) * 5
    with torch.no_grad():
        before, _ = model(tokens, need_weights)
        after, _ = model(changed, need_weights)
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_fused_explicit_and_incremental_paths_agree(model):
    tokens = torch.randn(2, 12, 7)
    with torch.no_grad():
        fused, no_weights = model(tokens)
        explicit, weights = model(tokens, need_weights=True)
        cache, steps, step_weights = None, [], []
        for t in range(12):
            output, w, cache = model.step(tokens[:, t], cache)
            steps.append(output)
            step_weights.append(w)
    assert no_weights is None and fused.shape == (2, 12, 16) and weights.shape == (2, 4, 12, 12)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(steps, dim=1), explicit, atol=1e-5, rtol=1e-5)
    # the incremental read-out's attention is the last row of the full causal map
    torch.testing.assert_close(step_weights[-1][:, :, 0], weights[:, :, -1], atol=1e-6, rtol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 12))
    assert torch.all(weights.triu(diagonal=1) == 0)  # no weight on the future


def test_training_attention_runs_in_fp32_under_cpu_bf16_autocast():
    q, k, v = (torch.randn(5, 4, 40, 16).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_causal_attention(q, k, v)
    expected, _ = explicit_attention(q.float(), k.float(), v.float(), causal=True)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)  # bf16 attention is off by ~1e-2


def test_a_sequence_longer_than_the_context_is_refused(model):
    with pytest.raises(ValueError, match="exceed the transformer's context length 12"):
        model(torch.randn(1, 13, 7))


@pytest.fixture
def trainer(tmp_path):
    return make_trainer("point-robot", tmp_path / "run", algo="transformer", seed=3)


def test_context_length_is_one_meta_test_trial(trainer):
    agent = trainer.algorithm.agent
    p = trainer.config.protocol
    assert agent.context_length == p.num_steps_per_eval == 60  # 3 episodes of 20 steps on point-robot
    assert agent.context_dim == 2 * 2 + 2 + 1 + 1             # obs, action, reward, next obs, episode-start flag


def test_the_belief_acted_on_is_the_belief_trained_on(trainer):
    """Collection acts in context: every trial's transitions, read one at a time, give the same beliefs as the
    training path computes from the same transitions replayed from the buffer."""
    algorithm = trainer.algorithm
    agent, task = algorithm.agent, int(algorithm.train_tasks[0])
    trial = agent.context_length
    acted = []
    original = agent.update_context

    def recording_update(transition):
        original(transition)
        acted.append((agent.context.clone(), agent.z.clone()))

    agent.update_context = recording_update
    collected = collect_data(algorithm.env, agent, task, 2 * trial, algorithm.max_path_length, algorithm.rl_buffer,
                             algorithm.enc_buffer, update_posterior=True, add_to_enc_buffer=True,
                             sample_task_context=algorithm.sample_task_context,
                             trial_steps=algorithm.protocol.num_steps_per_eval)
    assert collected == 2 * trial and len(acted) == 2 * trial
    # the context was cleared after the first trial and never grew past one
    assert [context.shape[1] for context, _ in acted] == [*range(1, trial + 1)] * 2
    first_trial = acted[trial - 1][0]                                         # (1, 60, context_dim)
    assert first_trial[0, :, -1].nonzero().flatten().tolist() == [0, 20, 40]  # episode starts flagged

    # the buffer holds exactly these two trials: a replayed window is the same tokens, in the same order
    acted_rows = torch.cat([first_trial, acted[-1][0]], dim=1)                # (1, 120, context_dim)
    positions = algorithm.rl_buffer.sequence_positions(np.array([task]), trial, np.random.default_rng(0))
    sequences, starts = sample_rl_sequences(algorithm.rl_buffer, np.array([task]), trial, np.random.default_rng(0),
                                            context_uses_sparse_reward=False, critic_uses_dense_reward=True)
    assert torch.equal(agent.tokens(sequences, starts), acted_rows[:, positions[0]])
    # and training reads a trial as acting did: the belief before each step, then after the last
    with torch.no_grad():
        beliefs = agent.beliefs(first_trial)                                  # (1, 61, latent)
    torch.testing.assert_close(beliefs[0, 1:], torch.cat([z for _, z in acted[:trial]]), atol=1e-5, rtol=1e-5)
    assert torch.equal(beliefs[0, 0], agent.prior_belief.detach())


def test_adapt_keeps_the_belief_and_attention_covers_the_context(trainer):
    algorithm = trainer.algorithm
    agent, env = algorithm.agent, algorithm.env
    env.unwrapped.reset_task(int(algorithm.train_tasks[1]))
    agent.clear_context()
    prior = agent.z.clone()
    with torch.no_grad():
        rollout(env, agent, algorithm.max_path_length, accum_context=True)
        acted = agent.z.clone()
        agent.adapt()
        assert torch.equal(agent.z, acted) and not torch.equal(acted, prior)
        assert agent.attention_weights.shape == (1, 4, 1, 20)
        full = agent.infer_posterior(agent.context).clone()
    torch.testing.assert_close(full, acted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="reads its own ordered history"):
        agent.infer_posterior(torch.zeros(1, 5, agent.context_dim - 1))


def test_one_step_trains_every_network_on_the_protocols_sample_count(trainer):
    algorithm = trainer.algorithm
    algorithm.collect_initial_data()
    p = trainer.config.protocol
    watched = {"sequence model": algorithm.agent.sequence_model, "belief head": algorithm.agent.belief_head,
               "policy": algorithm.agent.policy, "qf1": algorithm.critic.qf1, "vf": algorithm.critic.vf}
    before = {name: [q.detach().clone() for q in module.parameters()] for name, module in watched.items()}
    prior_before = algorithm.agent.prior_belief.detach().clone()
    sizes = []
    original = algorithm.sac_update
    algorithm.sac_update = lambda batch, z, next_z, losses: (sizes.append((batch.obs.shape[0], z.shape, next_z.shape))
                                                              or original(batch, z, next_z, losses))
    algorithm.train_step()
    assert sizes == [(p.meta_batch * p.batch_size, (p.meta_batch * p.batch_size, 32), (p.meta_batch * p.batch_size, 32))]
    for name, module in watched.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters())), f"{name} did not change"
    assert not torch.equal(prior_before, algorithm.agent.prior_belief)


@pytest.mark.parametrize("env, overrides", [
    ("point-robot", []),
    # shorter trials keep these to seconds (100- and 200-step contexts); the full smoke tier is the CLI's
    ("sparse-point-robot", ["num_iterations=1", "num_steps_per_eval=100", "num_exp_traj_eval=1"]),
    ("cheetah-vel", ["num_iterations=1", "num_steps_per_eval=200", "num_exp_traj_eval=0"]),
])
def test_smoke_run_on_every_environment(tmp_path, env, overrides):
    results = make_trainer(env, tmp_path / "run", algo="transformer", overrides=overrides).run()
    assert np.isfinite(results["meta_test_return"]) and np.isfinite(results["final_eval"]["meta_test_return"])
    assert results["grad_steps"] > 0


def test_kill_and_resume_is_bit_identical(tmp_path, monkeypatch):
    overrides = ["num_iterations=3"]
    reference = make_trainer("point-robot", tmp_path / "reference", algo="transformer", seed=5, overrides=overrides)
    reference_results = reference.run()

    trainer = make_trainer("point-robot", tmp_path / "killed", algo="transformer", seed=5, overrides=overrides)
    original = trainer.algorithm.train_iteration

    def train_iteration(iteration_idx):
        if iteration_idx == 2:
            raise KeyboardInterrupt
        return original(iteration_idx)

    monkeypatch.setattr(trainer.algorithm, "train_iteration", train_iteration)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["iteration"] == 1
    torch.manual_seed(12345)  # a fresh process knows nothing of the old streams
    results = Trainer.from_run_dir(tmp_path / "killed", progress=False).run(resume=True)
    assert (strip_nondeterministic(read_metrics(tmp_path / "killed"))
            == strip_nondeterministic(read_metrics(tmp_path / "reference")))
    assert results["final_eval"] == reference_results["final_eval"]


def test_the_attention_notebook_reads_the_transformers_last_read_out(trainer):
    """What the attention-map notebook plots: after each episode, the last block's attention from the newest
    position over every transition read so far, summing to one over them."""
    from experiments import analysis
    record = analysis.record_episodes(trainer, trainer.env.unwrapped.test_task_ids[0], seed=3)
    assert [weights.shape for weights in record["attention"]] == [(4, 1, 20), (4, 1, 40), (4, 1, 60)]
    final = analysis.attention_after(record, analysis.attention_stages(record)["after the final episode"])
    assert final.shape == (60,) and final.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(analysis.attention_per_episode(final, 20)) == 3
