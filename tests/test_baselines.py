"""PEARL, FOCAL and VariBAD: encoder invariances, belief algebra, losses, and one training iteration each."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from algos.focal import FocalAgent, FocalConfig, distance_metric_loss
from algos.pearl import PearlAgent, PearlConfig, product_of_gaussians
from algos.varibad import VariBADAgent, VariBADConfig
from algos.core.trainer import build_config
from tests.conftest import make_trainer

OBS, ACT = 2, 2
CONTEXT_DIM = OBS + ACT + 1


def random_context(num_tasks=3, n=12, seed=0):
    return torch.randn(num_tasks, n, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def test_product_of_gaussians_matches_closed_form():
    # N(1, 1) * N(3, 4): precision 1 + 1/4 = 5/4 -> variance 4/5; mean = var * (1/1 + 3/4) = 4/5 * 7/4 = 7/5
    means = torch.tensor([[[1.0], [3.0]]])
    variances = torch.tensor([[[1.0], [4.0]]])
    mean, variance = product_of_gaussians(means, variances)
    assert torch.allclose(mean, torch.tensor([[1.4]]))
    assert torch.allclose(variance, torch.tensor([[0.8]]))


def test_pearl_encoder_is_permutation_invariant():
    torch.manual_seed(0)
    agent = PearlAgent(OBS, ACT, PearlConfig(hidden_dim=16))
    context = random_context()
    agent.infer_posterior(context)
    means, variances = agent.z_means.clone(), agent.z_vars.clone()
    agent.infer_posterior(context[:, torch.randperm(context.shape[1])])
    assert torch.allclose(agent.z_means, means, atol=1e-5) and torch.allclose(agent.z_vars, variances, atol=1e-6)


def test_pearl_belief_narrows_as_context_grows():
    torch.manual_seed(0)
    agent = PearlAgent(OBS, ACT, PearlConfig(hidden_dim=16))
    context = random_context(n=64)
    widths = []
    for n in (1, 4, 16, 64):
        agent.infer_posterior(context[:, :n])
        widths.append(agent.z_vars.mean().item())
    assert all(later < earlier for earlier, later in zip(widths, widths[1:]))


def test_pearl_resamples_z_each_episode_from_the_belief():
    torch.manual_seed(0)
    agent = PearlAgent(OBS, ACT, PearlConfig(hidden_dim=16))
    agent.clear_context()
    first = agent.z.clone()
    agent.end_episode()
    assert not torch.equal(first, agent.z)
    assert torch.equal(agent.z_means, torch.zeros_like(agent.z_means))  # still the prior: nothing was inferred


def test_focal_encoder_is_permutation_invariant_and_deterministic():
    torch.manual_seed(0)
    agent = FocalAgent(OBS, ACT, FocalConfig(hidden_dim=16))
    context = random_context()
    z = agent.infer_posterior(context).clone()
    assert torch.allclose(agent.infer_posterior(context[:, torch.randperm(context.shape[1])]), z, atol=1e-5)
    assert torch.equal(agent.infer_posterior(context), z)


def test_focal_loss_lower_for_separated_clusters():
    task_ids = torch.tensor([0, 1, 2, 0, 1, 2])
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    jitter = 0.05 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    separated = centres[task_ids] + jitter
    merged = 0.1 * centres[task_ids] + jitter
    separated_loss = distance_metric_loss(separated, task_ids, beta=1.0, power=2.0, eps=1e-3)
    merged_loss = distance_metric_loss(merged, task_ids, beta=1.0, power=2.0, eps=1e-3)
    assert separated_loss < merged_loss


def test_focal_loss_terms_exact():
    latents = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])  # tasks 0, 1, 0
    task_ids = torch.tensor([0, 1, 0])
    # same-task pair (0, 2): squared distance 1; different-task pairs: d^2 = 25 and 9+9=18
    expected = 1.0 + (1 / (25 + 1e-3) + 1 / (18 + 1e-3)) / 2
    assert distance_metric_loss(latents, task_ids, 1.0, 2.0, 1e-3).item() == pytest.approx(expected, rel=1e-5)


def test_varibad_encoder_depends_on_order():
    torch.manual_seed(0)
    agent = VariBADAgent(OBS, ACT, VariBADConfig(hidden_dim=16))
    context = random_context()
    with torch.no_grad():
        z = agent.infer_posterior(context).clone()
        z_reversed = agent.infer_posterior(context.flip(1))
    assert not torch.allclose(z, z_reversed, atol=1e-4)


ENVS = ["point-robot", "sparse-point-robot", "cheetah-vel"]


@pytest.mark.parametrize("algo,encoder_attr", [("pearl", "context_encoder"), ("focal", "context_encoder"),
                                                ("varibad", "context_encoder")])
@pytest.mark.parametrize("env", ENVS)
def test_one_iteration_updates_every_network(env, algo, encoder_attr, tmp_path):
    overrides = ["num_iterations=1"] + (["num_initial_steps=200"] if env == "cheetah-vel" else [])
    trainer = make_trainer(env, tmp_path / "run", algo=algo, overrides=overrides)
    algorithm = trainer.algorithm
    algorithm.collect_initial_data()
    watched = {
        "encoder": getattr(algorithm.agent, encoder_attr), "policy": algorithm.agent.policy,
        "qf1": algorithm.critic.qf1, "vf": algorithm.critic.vf, "target_vf": algorithm.critic.target_vf,
    }
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in watched.items()}
    scalars = algorithm.train_iteration(0)
    for name, module in watched.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
        assert changed, f"{algo} on {env}: {name} did not change"
    assert all(np.isfinite(v) for v in scalars.values())
    assert algorithm.grad_steps == trainer.config.protocol.num_train_steps_per_itr


def test_rlkit_init_matches_pearls_reference_code(tmp_path):
    """agent.network_init=rlkit: every hidden layer of the MLPs U(+-1/sqrt(out_features)) with biases 0.1, output
    layers within 3e-3, the policy heads within 1e-3; other layers (PEARL has none) untouched; target V = V."""
    trainer = make_trainer("sparse-point-robot", tmp_path / "run", algo="pearl", overrides=["agent.network_init=rlkit"])
    algorithm = trainer.algorithm
    agent, critic = algorithm.agent, algorithm.critic
    hidden = [agent.context_encoder[0], agent.context_encoder[2], agent.context_encoder[4], *agent.policy.trunk[::2],
              critic.qf1.net[0], critic.qf1.net[2], critic.qf1.net[4], critic.vf.net[0]]
    for layer in hidden:
        bound = 1.0 / layer.weight.shape[0] ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert torch.all(layer.bias == 0.1)
    # the first layers are narrow: PyTorch's default would have allowed weights up to 1/sqrt(in_features) > 0.3
    assert agent.context_encoder[0].weight.abs().max() <= 1.0 / 200 ** 0.5
    for layer in (agent.context_encoder[-1], critic.qf1.net[-1], critic.qf2.net[-1], critic.vf.net[-1]):
        assert layer.weight.abs().max() <= 3e-3 and layer.bias.abs().max() <= 3e-3
    for head in (agent.policy.mean_head, agent.policy.log_std_head):
        assert head.weight.abs().max() <= 1e-3 and head.bias.abs().max() <= 1e-3
    for a, b in zip(critic.target_vf.parameters(), critic.vf.parameters()):
        assert torch.equal(a, b)


def test_default_init_is_pytorchs(tmp_path):
    """The default (agent.network_init=torch) leaves PyTorch's initialisation: hidden biases are not rlkit's 0.1."""
    trainer = make_trainer("sparse-point-robot", tmp_path / "run", algo="pearl")
    first = trainer.algorithm.agent.context_encoder[0]
    assert trainer.config.agent.network_init == "torch"
    assert first.weight.abs().max() > 1.0 / 200 ** 0.5  # U(+-1/sqrt(5)) over 1000 weights exceeds 0.0707
    assert not torch.all(first.bias == 0.1)


def test_network_init_is_validated():
    from algos.core.config import ConfigError
    with pytest.raises(ConfigError, match="network_init"):
        build_config("point-robot", "pearl", "smoke", 0, ["agent.network_init=xavier"])
