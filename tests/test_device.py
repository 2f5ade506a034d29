"""The ``device`` and ``bf16`` run settings: resolution, recording, the device-agnostic paths on the CPU, and (where
torch sees a GPU) every method on CUDA with a checkpoint that resumes on the CPU."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from algos import ALGORITHMS
from algos.core import device as device_module
from algos.core.config import ConfigError
from algos.core.io import REPO_ROOT
from algos.core.trainer import Trainer, build_config
from tests.conftest import make_trainer, read_metrics, strip_nondeterministic

HAS_CUDA = torch.cuda.is_available()


def test_auto_resolves_to_what_the_machine_has_and_is_recorded(tmp_path):
    config = build_config("point-robot", "pearl", "smoke", 0)
    assert config.device == ("cuda" if HAS_CUDA else "cpu")
    assert config.bf16 is device_module.native_bf16(config.device)
    trainer = Trainer(config, run_dir=tmp_path / "run", progress=False)
    results = trainer.run()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["device"] == config.device and saved["bf16"] is config.bf16
    assert results["config"]["bf16"] is config.bf16
    assert results["machine"]["cpu_native_bf16"] is device_module.cpu_has_native_bf16()
    assert set(results["machine"]["versions"]) >= {"torch", "numpy", "gymnasium", "mujoco"}


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_native_support_and_explicit_values_win(monkeypatch, native):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert build_config("point-robot", "pearl", "smoke", 0, ["device=cpu"]).bf16 is native
    assert build_config("point-robot", "pearl", "smoke", 0, ["device=cpu", "bf16=true"]).bf16 is True
    assert build_config("point-robot", "pearl", "smoke", 0, ["device=cpu", "bf16=false"]).bf16 is False


@pytest.mark.parametrize("override, key", [("device=tpu", "device"), ("bf16=sometimes", "bf16")])
def test_bad_device_or_precision_is_a_clear_error(override, key):
    with pytest.raises(ConfigError, match=key):
        build_config("point-robot", "pearl", "smoke", 0, [override])


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="device.*cuda.*no CUDA GPU"):
        build_config("point-robot", "pearl", "smoke", 0, ["device=cuda"])


def test_resumed_run_keeps_its_precision_and_warns_where_it_is_emulated(tmp_path, monkeypatch, capsys):
    trainer = make_trainer("point-robot", tmp_path / "run", "sac-no-context", overrides=["bf16=true", "device=cpu"])
    trainer.run()
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    resumed = Trainer.from_run_dir(tmp_path / "run", progress=False)
    assert resumed.config.bf16 is True
    assert "bf16 autocast, which this CPU only emulates" in capsys.readouterr().err


@pytest.mark.parametrize("algo", [a for a in ALGORITHMS if a != "oracle"])
def test_agent_tensors_live_on_the_agent_device(tmp_path, algo):
    trainer = make_trainer("point-robot", tmp_path / algo, algo, overrides=["device=cpu"])
    agent = trainer.algorithm.agent
    assert agent.device == torch.device("cpu")
    agent.clear_context()
    assert agent.z.device == agent.device and agent.context.device == agent.device


def test_policy_step_leaves_q_weights_trainable_and_without_policy_gradients(tmp_path):
    """The policy/V pass freezes Q's weights (their gradients were never used): afterwards Q is trainable again
    and its gradients are exactly those of the Q loss."""
    trainer = make_trainer("point-robot", tmp_path / "run", "pearl", overrides=["device=cpu", "bf16=false"])
    algorithm = trainer.algorithm
    algorithm.collect_initial_data()
    q_losses = []
    original = algorithm.optimizers["qf"].step

    def recording_step(*args, **kwargs):
        q_losses.append([p.grad.clone() for p in algorithm.critic.qf1.parameters()])
        return original(*args, **kwargs)

    algorithm.optimizers["qf"].step = recording_step
    algorithm.train_step()
    assert all(p.requires_grad for p in algorithm.critic.qf1.parameters())
    assert all(p.grad is not None for p in algorithm.critic.qf1.parameters())
    # no policy-loss gradient was added to Q after its step
    assert all(torch.equal(a, p.grad) for a, p in zip(q_losses[0], algorithm.critic.qf1.parameters()))


def test_wall_time_is_split_by_phase(tmp_path):
    results = make_trainer("point-robot", tmp_path / "run", "pearl").run()
    split = dict(results["wall_time_split_s"])
    assert set(split) == {"collection_s", "gradient_s", "evaluation_s", "other_s", "final_evaluation_s"}
    assert all(value >= 0 for value in split.values())
    assert split["collection_s"] > 0 and split["gradient_s"] > 0 and split["evaluation_s"] > 0
    assert split.pop("final_evaluation_s") > 0  # after the loop: not part of wall_time_s
    assert sum(split.values()) == pytest.approx(results["wall_time_s"], rel=1e-6)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("algo", [a for a in ALGORITHMS if a != "oracle"])
def test_every_method_trains_on_cuda_and_resumes_on_the_cpu(tmp_path, algo, monkeypatch):
    run_dir = tmp_path / algo
    config = build_config("point-robot", algo, "smoke", 0, ["device=cuda", "num_iterations=1"])
    trainer = Trainer(config, run_dir=run_dir, progress=False)
    trainer.run()
    assert next(trainer.algorithm.critic.parameters()).device.type == "cuda"
    # the same checkpoint continues on a machine without a GPU
    saved = json.loads((run_dir / "config.json").read_text())
    saved["protocol"]["num_iterations"] = 2
    (run_dir / "config.json").write_text(json.dumps(saved))
    (run_dir / "results.json").unlink()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resumed = Trainer.from_run_dir(run_dir, progress=False)
    assert resumed.device.type == "cpu"
    resumed.run(resume=True)
    assert [row["iteration"] for row in read_metrics(run_dir)] == [0, 1]


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_runs_are_deterministic(tmp_path):
    rows = []
    for name in ("a", "b"):
        trainer = make_trainer("point-robot", tmp_path / name, "pearl", overrides=["device=cuda", "bf16=false"])
        trainer.run()
        rows.append(strip_nondeterministic(read_metrics(tmp_path / name)))
    assert rows[0] == rows[1]


@pytest.mark.parametrize("algo", ["pearl", "setformer"])
def test_frozen_q_policy_step_is_bit_identical_to_the_naive_step(tmp_path, algo):
    """Skipping Q's weight gradients in the policy/V pass removes work, not math: from the same state, steps with
    and without the freeze leave every weight and every logged loss bit-identical."""
    outcomes = []
    for freeze in (True, False):
        trainer = make_trainer("point-robot", tmp_path / str(freeze), algo, seed=3, overrides=["device=cpu"])
        algorithm = trainer.algorithm
        algorithm.freeze_q_in_policy_step = freeze
        algorithm.collect_initial_data()
        losses = [algorithm.train_step() for _ in range(4)]
        weights = {name: p.detach().clone() for name, p in [*algorithm.agent.named_parameters(),
                                                            *algorithm.critic.named_parameters()]}
        outcomes.append((losses, weights))
    (losses_a, weights_a), (losses_b, weights_b) = outcomes
    assert all(torch.equal(a[k], b[k]) for a, b in zip(losses_a, losses_b) for k in a)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_the_cpu_allocator_is_tuned_once_and_recorded(tmp_path):
    """glibc's malloc keeps freed activations in the process (no page faults per step); the run's machine
    description says what was set. Without glibc nothing is set and the record says so."""
    import ctypes.util
    results = make_trainer("point-robot", tmp_path / "run", "sac-no-context").run()
    allocator = results["machine"]["allocator"]
    if not ctypes.util.find_library("c"):
        assert allocator == {"tuned": False}
        return
    assert allocator == {"tuned": True, "mmap_threshold_bytes": 32 * 2 ** 20, "trim_threshold_bytes": 2 ** 30}
    assert device_module.tune_cpu_allocator() == allocator  # idempotent: set once per process


def test_the_tuned_allocator_leaves_the_numbers_unchanged(tmp_path):
    """The same gradient steps in a fresh process with glibc's default allocator and with the tuned one."""
    import subprocess
    import sys
    script = (
        "import sys, hashlib, torch\n"
        "import algos.core.trainer as trainer\n"
        "if sys.argv[1] == 'default':\n"
        "    trainer.tune_cpu_allocator = lambda: {'tuned': False}\n"
        "t = trainer.Trainer(trainer.build_config('point-robot', 'pearl', 'smoke', 3, ['batch_size=512']),"
        " run_dir=sys.argv[2], progress=False)\n"
        "a = t.algorithm\n"
        "a.collect_initial_data()\n"
        "[a.train_step() for _ in range(5)]\n"
        "h = hashlib.sha256()\n"
        "for _, p in sorted(a.critic.state_dict().items()): h.update(p.numpy().tobytes())\n"
        "print(h.hexdigest())\n")
    digests = [subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / mode)], capture_output=True,
                              text=True, check=True, cwd=REPO_ROOT).stdout.strip().splitlines()[-1]
               for mode in ("default", "tuned")]
    assert digests[0] == digests[1]


def test_subnormals_are_flushed_in_a_run_and_recorded(tmp_path):
    """A run computes with subnormal floats flushed to zero where the CPU supports it, and says so."""
    results = make_trainer("point-robot", tmp_path / "run", "sac-no-context").run()
    flushed = results["machine"]["subnormals_flushed"]
    assert flushed is device_module.subnormals_flushed() is not None
    if not flushed:
        pytest.skip("this CPU cannot flush subnormals")
    tiny = torch.finfo(torch.float32).tiny
    assert torch.tensor([tiny]).div(4).item() == 0.0
    with device_module.subnormals_kept():
        assert torch.tensor([tiny]).div(4).item() == tiny / 4
    assert torch.tensor([tiny]).div(4).item() == 0.0  # flushing again after the block


def test_flushing_subnormals_leaves_a_recurrent_encoders_weights_unchanged():
    """A GRU read over 256 steps: kept, the gradient reaching its first inputs has decayed into subnormals; flushed,
    they are zero, and the weight gradients and the weights after an Adam step are the same bits."""
    if not device_module.flush_subnormals():
        pytest.skip("this CPU cannot flush subnormals")
    tiny = torch.finfo(torch.float32).tiny
    outcomes = []
    for way in (device_module.subnormals_kept, contextlib.nullcontext):
        torch.manual_seed(0)
        gru = torch.nn.GRU(8, 8, batch_first=True)
        optimizer = torch.optim.Adam(gru.parameters())
        inputs = torch.randn(4, 256, 8, requires_grad=True)
        with way():
            _, last_hidden = gru(inputs)
            last_hidden.sum().backward()
            grads = [p.grad.clone() for p in gru.parameters()]
            optimizer.step()
            # counted inside the block: with subnormals flushed, a comparison reads one as zero
            subnormal = int(((inputs.grad != 0) & (inputs.grad.abs() < tiny)).sum())
        outcomes.append((subnormal, grads, [p.detach().clone() for p in gru.parameters()]))
    (kept_subnormal, kept_grads, kept_weights), (flushed_subnormal, flushed_grads, flushed_weights) = outcomes
    assert kept_subnormal > 0 and flushed_subnormal == 0  # the slow path was taken, and then avoided
    assert all(torch.equal(a, b) for a, b in zip(kept_grads, flushed_grads))
    assert all(torch.equal(a, b) for a, b in zip(kept_weights, flushed_weights))
