"""The seams of the design: a method is one file whose class declares its facts, an environment's facts live in its
spec, every trainable parameter has exactly one optimiser, a batch chooses its rewards once, saved configs are
read in the current layout, and the belief over hypotheses keeps its own books."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import algos
from algos import ALGORITHMS, algorithm_class, display_name, methods_with_role
from algos.core.algorithm import Algorithm, check_facts
from algos.core.config import BENCHMARK, ConfigError, flatten_config, protocol_for, to_dict
from algos.core.evaluation import meta_test_episodes
from algos.core.meta_sac import check_one_optimizer_each
from algos.core.saved_config import upgrade_flat_config
from algos.core.trainer import build_config, check_identity, config_from_dict, run_identity, semantic_config
from algos.setformer import HypothesisBelief, SetFormer
from envs_glue import ENV_SPECS, make_env
from experiments.engine import config_changes, unsupported_reason
from experiments.report import ENV_ORDER, known_optimum, reference_for
from tests.conftest import RecordingAgent

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- methods
def test_registry_reads_every_method_and_its_facts():
    assert ALGORITHMS == ("sac-no-context", "pearl", "focal", "varibad", "transformer", "setformer", "oracle",
                          "sac-true-task")  # table order
    assert methods_with_role("ours") == ("setformer",)
    assert methods_with_role("baseline") == ("pearl", "focal", "varibad", "transformer")
    assert display_name("focal") == "FOCAL (online SAC variant)" and display_name("an-old-name") == "an-old-name"
    for name in ALGORITHMS:
        cls = algorithm_class(name)
        assert issubclass(cls, Algorithm) and cls.name == name
    assert unsupported_reason("oracle", "cheetah-vel").startswith("the oracle exists only for the point robots")
    assert unsupported_reason("oracle", "point-robot") is None and unsupported_reason("pearl", "cheetah-vel") is None
    assert reference_for("pearl", "cheetah-vel") == pytest.approx(-64.634)
    assert reference_for("setformer", "cheetah-vel") is None


def test_a_subclass_does_not_inherit_the_reference_number():
    class PearlVariant(algorithm_class("pearl")):
        name = "pearl-variant"
        display_name = "PEARL variant"
    check_facts(PearlVariant)
    assert PearlVariant.own_reference_row() is None and algorithm_class("pearl").own_reference_row() == "PEARL"


def test_incomplete_facts_are_refused_naming_the_class():
    class Nameless(SetFormer):
        name = ""
    with pytest.raises(TypeError, match="Nameless.*name"):
        check_facts(Nameless)

    class SameDisplayNameAsParent(SetFormer):
        name = "setformer-variant"
    with pytest.raises(TypeError, match="display_name"):
        check_facts(SameDisplayNameAsParent)

    class BadRole(SetFormer):
        name = "bad-role"
        display_name = "bad"
        role = "competitor"
    with pytest.raises(TypeError, match="role"):
        check_facts(BadRole)


def _algorithm(algo: str, env: str = "point-robot"):
    config = build_config(env, algo, "smoke", 0)
    return algorithm_class(algo)(make_env(env, seed=0), config.protocol, config.agent, np.random.default_rng(0))


@pytest.mark.parametrize("algo", ["sac-no-context", "pearl", "focal", "varibad", "setformer"])
def test_every_trainable_parameter_has_exactly_one_optimizer(algo):
    algorithm = _algorithm(algo)
    owners = {}
    for key, optimizer in algorithm.optimizers.items():
        for group in optimizer.param_groups:
            for param in group["params"]:
                owners.setdefault(id(param), []).append(key)
    trainable = [p for m in (algorithm.agent, algorithm.critic) for p in m.parameters() if p.requires_grad]
    if algorithm.log_temperature is not None:  # a learned temperature (the method's default on this environment)
        trainable.append(algorithm.log_temperature)
    assert all(len(owners.get(id(p), [])) == 1 for p in trainable)
    assert len(owners) == len(trainable)
    expected_encoder = [p for p in algorithm.agent.parameters() if p.requires_grad
                        and all(p is not q for q in algorithm.agent.policy.parameters())]
    encoder = algorithm.optimizers.get("encoder")
    assert len(encoder.param_groups[0]["params"] if encoder else []) == len(expected_encoder)


def test_the_encoder_optimiser_takes_its_own_learning_rate_when_set():
    def learning_rates(overrides):
        config = build_config("point-robot", "setformer", "smoke", 0, overrides)
        algorithm = algorithm_class("setformer")(make_env("point-robot", seed=0), config.protocol, config.agent,
                                                 np.random.default_rng(0))
        return {key: optimizer.param_groups[0]["lr"] for key, optimizer in algorithm.optimizers.items()}

    assert learning_rates(["lr=0.001"]) == {"policy": 1e-3, "qf": 1e-3, "vf": 1e-3, "encoder": 1e-3}  # 0: lr
    assert learning_rates(["lr=0.001", "encoder_lr=0.0003"]) == {"policy": 1e-3, "qf": 1e-3, "vf": 1e-3,
                                                                "encoder": 3e-4}
    with pytest.raises(ConfigError, match="encoder_lr"):
        build_config("point-robot", "setformer", "smoke", 0, ["encoder_lr=-1"])


def test_a_new_head_trains_without_being_listed_anywhere():
    class WithExtraHead(SetFormer):
        def make_agent(self):
            agent = super().make_agent()
            agent.value_head = nn.Linear(3, 1)  # a new auxiliary head, registered like any module
            return agent

    config = build_config("point-robot", "setformer", "smoke", 0)
    algorithm = WithExtraHead(make_env("point-robot", seed=0), config.protocol, config.agent, np.random.default_rng(0))
    stepped = {id(p) for p in algorithm.optimizers["encoder"].param_groups[0]["params"]}
    assert all(id(p) in stepped for p in algorithm.agent.value_head.parameters())


def test_a_parameter_left_out_or_stepped_twice_is_refused():
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    only_first = {"a": torch.optim.Adam(module[0].parameters())}
    with pytest.raises(RuntimeError, match=r"1\.weight is stepped by no optimiser"):
        check_one_optimizer_each([module], only_first)
    twice = {"a": torch.optim.Adam(module.parameters()), "b": torch.optim.Adam(module[1].parameters())}
    with pytest.raises(RuntimeError, match=r"\['a', 'b'\]"):
        check_one_optimizer_each([module], twice)


PROBE = '''"""A method made by subclassing an existing one: one file, no other edit."""
from algos.pearl import PEARL


class ProbeMethod(PEARL):
    name = "probe-method"
    display_name = "Probe method"
'''


def test_a_method_is_one_file(tmp_path):
    """Dropping a module into algos/ is all it takes: the run CLI trains it and the benchmark lists it."""
    tree = tmp_path / "tree"
    for package in ("algos", "envs_glue", "models", "experiments"):
        shutil.copytree(REPO_ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.ipynb", "notebooks"))
    (tree / "algos" / "probe_method.py").write_text(PROBE)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=300)

    trained = run("experiments.run", "--algo", "probe-method", "--env", "point-robot", "--tier", "smoke",
                  "--run-dir", str(tmp_path / "run"), "--no-progress", "--set", "num_iterations=1")
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["algo"] == "probe-method"
    benchmark = run("experiments.benchmark", "--tier", "smoke", "--envs", "point-robot", "--algos", "probe-method",
                    "--seeds", "1", "--out", str(tmp_path / "bench"), "--no-progress", "--set", "num_iterations=1")
    assert benchmark.returncode == 0, benchmark.stderr
    results = (tmp_path / "bench" / "smoke" / "RESULTS.md").read_text()
    assert "| Probe method |" in results
    assert "-15.468†" not in results  # PEARL's own reference number stays PEARL's


# ---------------------------------------------------------------------- environments
def test_every_environment_has_one_spec_and_one_protocol():
    assert set(BENCHMARK) == set(ENV_SPECS) and ENV_ORDER[:3] == ("point-robot", "sparse-point-robot", "cheetah-vel")
    for name, spec in ENV_SPECS.items():
        for tier in ("benchmark", "quick", "smoke"):
            assert protocol_for(name, tier).sparse_rewards == spec.sparse_reward
        smoke = protocol_for(name, "smoke")
        assert smoke.num_initial_steps == smoke.num_steps_prior == spec.max_episode_steps
        assert known_optimum(name) == (spec.known_optimum, spec.known_optimum_note)
    assert known_optimum("point-robot")[0] == -4.60 and known_optimum("sparse-point-robot")[0] == 13.07
    assert ENV_SPECS["sparse-point-robot"].goal_radius == 0.2 and ENV_SPECS["point-robot"].goal_radius is None


# ---------------------------------------------------------------------- saved configs
def _old_layout(config) -> dict:
    """A config as runs saved it before PEARL's KL weight moved from the protocol into PEARL's config."""
    data = json.loads(json.dumps(to_dict(config)))
    data["protocol"]["kl_lambda"] = data["agent"].pop("kl_lambda", 0.1 if not config.protocol.sparse_rewards else 1.0)
    return data


@pytest.mark.parametrize("algo, env", [("pearl", "sparse-point-robot"), ("setformer", "point-robot")])
def test_configs_saved_before_a_setting_moved_read_in_the_current_layout(algo, env):
    current = build_config(env, algo, "smoke", 0)
    old = _old_layout(current)
    loaded = config_from_dict(old)
    assert semantic_config(loaded) == semantic_config(current)
    if algo == "pearl":
        assert loaded.agent.kl_lambda == 1.0
    assert config_changes(old, json.loads(json.dumps(to_dict(current)))) == {}
    # a checkpoint written then resumes now
    state = {"identity": {**run_identity(current), "config_sha256": "written-before-the-move"},
             "config": flatten_config(old)}
    check_identity(state, current, Path("run/checkpoint.pt"))
    # ... while a real change is still caught
    edited = build_config(env, algo, "smoke", 0, ["lr=0.01"])
    with pytest.raises(Exception, match="agent.lr"):
        check_identity(state, edited, Path("run/checkpoint.pt"))


def test_upgrade_drops_a_moved_setting_where_the_method_has_none():
    assert upgrade_flat_config({"protocol.kl_lambda": 0.1, "agent.lr": 1.0}, {"agent.lr": 1.0}) == {"agent.lr": 1.0}
    assert upgrade_flat_config({"protocol.kl_lambda": 1.0}, {"agent.kl_lambda": 0.1}) == {"agent.kl_lambda": 1.0}
    with pytest.raises(ConfigError, match="kl_lambda"):
        build_config("point-robot", "pearl", "smoke", 0, ["kl_lambda=-1"])


def test_a_saved_config_reads_as_what_its_run_computed(tmp_path):
    """A setformer config saved before ``latent_norm`` existed ran with unbounded latents (and one with the older
    ``bounded_latents`` switch, with tanh or nothing): read now, it says so, instead of taking today's default."""
    current = flatten_config(to_dict(build_config("point-robot", "setformer", "smoke", 0)))
    assert current["agent.latent_norm"] == "sphere"
    before_the_switch = {k: v for k, v in current.items() if k != "agent.latent_norm"}
    assert upgrade_flat_config(before_the_switch, current)["agent.latent_norm"] == "none"
    for bounded, norm in ((True, "tanh"), (False, "none")):
        older = {**before_the_switch, "agent.bounded_latents": bounded}
        upgraded = upgrade_flat_config(older, current)
        assert upgraded["agent.latent_norm"] == norm and "agent.bounded_latents" not in upgraded
    # the run folder of such a run resumes with the latents it was trained with, and a comparison with a run of
    # today's default reports the difference
    from algos.core.trainer import Trainer
    from experiments.engine import config_changes
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    saved = json.loads(json.dumps(to_dict(build_config("point-robot", "setformer", "smoke", 0))))
    del saved["agent"]["latent_norm"]
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert Trainer.from_run_dir(run_dir, progress=False).config.agent.latent_norm == "none"
    today = json.loads(json.dumps(to_dict(build_config("point-robot", "setformer", "smoke", 0))))
    assert config_changes(saved, today)["agent.latent_norm"] == ("none", "sphere")
    # a setting added at the behaviour the code had before (no ADDED_KEYS entry) reads as its default: unchanged
    del saved["protocol"]["deterministic_exploration"], saved["agent"]["aux"]["reward_shapes_z"]
    assert list(config_changes(saved, today)) == ["agent.latent_norm"]
    assert list(config_changes(today, saved)) == ["agent.latent_norm"]


# ---------------------------------------------------------------------- evaluation and belief
def test_meta_test_episodes_explore_then_adapt_after_each_later_episode():
    env = make_env("point-robot", seed=0)
    agent = RecordingAgent(2, 2, env=env)
    env.unwrapped.reset_task(40)
    episodes = list(meta_test_episodes(env, agent, num_steps=80, num_exp_traj_eval=2, max_path_length=20,
                                       sparse_rewards=False))
    assert [e.exploring for e in episodes] == [True, True, False, False]
    assert [e.adapted for e in episodes] == [False, True, True, True]
    assert all(e.scored_rewards.shape == (20,) for e in episodes)
    assert episodes[0].scored_return == pytest.approx(float(np.sum(episodes[0].path["rewards"], dtype=np.float64)))


def test_belief_keeps_its_books():
    usable = torch.tensor([True, True, False, True])
    belief = HypothesisBelief(4)
    belief.reset(usable, switch_log_ratio=4.6)
    belief.observe(torch.tensor([-10.0, 0.0, 5.0, -2.0]))
    assert belief.scores()[2] == float("-inf")           # an unusable hypothesis is never believed
    assert belief.refutes(-5.0) and not belief.refutes(-4.0)
    torch.manual_seed(0)
    assert all(belief.sample() in (1, 3) for _ in range(20))
    belief.current = 0
    assert belief.current_refuted()
    belief.reset(torch.zeros(4, dtype=torch.bool), switch_log_ratio=4.6)
    assert torch.equal(belief.scores(), torch.zeros(4))  # nothing usable: every hypothesis stays possible


# ---------------------------------------------------------------------- layers
LAYERS = {  # package -> the project packages it may import (docs/ARCHITECTURE.md)
    "envs_glue": {"envs_glue"},
    "models": {"models"},
    "algos.core": {"envs_glue", "models", "algos.core"},
    "algos": {"envs_glue", "models", "algos.core", "algos"},
    "experiments": {"envs_glue", "models", "algos.core", "algos", "experiments"},
}


def _layer(module: str) -> str:
    return "algos.core" if module.startswith("algos.core") else module.split(".")[0]


def test_nothing_imports_upward():
    import ast
    for package in ("envs_glue", "models", "algos", "experiments"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            allowed = LAYERS[_layer(module)]
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for name in names:
                    # the one downward exception: the trainer looks a method up by name in the registry
                    if module == "algos.core.trainer" and name == "algos":
                        continue
                    if _layer(name) in LAYERS:
                        assert _layer(name) in allowed, f"{module} imports {name}"


def test_ray_is_only_imported_where_it_runs_things():
    """Every command works without touching Ray unless asked to: only the Ray backend imports it."""
    import ast
    users = set()
    for path in sorted(REPO_ROOT.glob("*/**/*.py")):
        if path.parts[len(REPO_ROOT.parts)] not in ("algos", "envs_glue", "models", "experiments"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "ray" or name.startswith("ray.") for name in names):
                users.add(str(path.relative_to(REPO_ROOT)))
    assert users == {"experiments/ray_backend.py"}


def _experiments_imports() -> dict[str, set[str]]:
    """``experiments`` module -> the ``experiments`` modules it imports, at module level or inside a function."""
    import ast
    modules = {path.stem for path in (REPO_ROOT / "experiments").glob("*.py") if path.stem != "__init__"}
    graph = {}
    for module in modules:
        imported = set()
        for node in ast.walk(ast.parse((REPO_ROOT / "experiments" / f"{module}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("experiments.")}
            elif isinstance(node, ast.ImportFrom) and node.module == "experiments":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
                imported.add(node.module.split(".")[1])
        graph[module] = imported & modules - {module}
    return graph


def test_experiments_has_no_import_circle():
    graph = _experiments_imports()
    assert "carry" in graph["engine"] and "ray_backend" in graph["benchmark"]  # module- and function-level imports
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import circle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_experiments_is_smaller_than_what_it_runs():
    """The commands stay thin: experiments/ holds fewer lines than the methods, models and environments together."""
    def lines(*packages: str) -> int:
        return sum(len(path.read_text().splitlines()) for package in packages
                   for path in (REPO_ROOT / package).rglob("*.py"))

    assert lines("experiments") < lines("algos", "models", "envs_glue")


def test_per_environment_defaults_are_applied_and_checked():
    from algos.core.algorithm import check_facts
    from envs_glue import ENV_SPECS
    for name in ALGORITHMS:
        cls = algorithm_class(name)
        assert set(cls.env_defaults) <= set(ENV_SPECS), f"{name}: env_defaults names an unknown environment"
        for env, settings in cls.env_defaults.items():
            config = cls.default_config(env)
            assert {key: getattr(config, key) for key in settings} == settings
    assert algorithm_class("focal").default_config("point-robot").lr == 1e-3
    assert algorithm_class("pearl").default_config("point-robot").lr == 3e-4

    class Misnamed(algorithm_class("pearl")):
        name, display_name = "misnamed", "misnamed"
        env_defaults = {"point-robot": {"learning_rate": 1e-3}}

    with pytest.raises(TypeError, match=r"env_defaults\['point-robot'\]` sets \['learning_rate'\], not fields of PearlConfig"):
        check_facts(Misnamed)


def test_every_methods_defaults_are_the_grid_point_selected_on_validation_tasks():
    """The selection rule, applied (docs/PROTOCOL.md#selection-rule): on each environment a method's default settings
    are the tuning grid's point that the committed selection chose for it; where its selection is pending or was
    never run, the references' settings. A default chosen any other way (on test tasks) fails here."""
    from algos.core.config import TUNING_GRID, grid_settings
    report = json.loads((REPO_ROOT / "benchmarks/benchmark/selection/selection.json").read_text())
    selected = {(s["env"], s["algo"]): s["selected"] for s in report["selections"]}
    assert selected[("point-robot", "setformer")] == "reference-settings"  # the committed report is the one read
    for name in methods_with_role("ours") + methods_with_role("baseline"):
        cls = algorithm_class(name)
        for env in ENV_SPECS:
            point = selected.get((env, name)) or next(iter(TUNING_GRID))
            config, wanted = cls.default_config(env), grid_settings(point)
            assert {key: getattr(config, key) for key in wanted} == wanted, f"{name} on {env}: not `{point}`"


def test_pearl_takes_the_references_kl_weight_per_environment():
    pearl = algorithm_class("pearl")
    assert [pearl.default_config(env).kl_lambda for env in ("point-robot", "sparse-point-robot", "ant-goal", "ant-dir")] \
        == [0.1, 1.0, 1.0, 0.1]
