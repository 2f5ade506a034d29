"""Four ways to cut the bf16 gradient step's non-matmul time, each timed against the step as runs take it:

- *row-chunked ReLU backward*: :class:`models.kernels.LinearReLU`'s backward over the batch's rows in chunks, so
  the ReLU mask, the input-gradient product and the weight gradient (summed over chunks in fp32) of each chunk
  work on data that fits the core's L2 cache; PEARL's whole step.
- *twin Q as one stacked product*: the critic's two Q networks (the tier's batch and widths) as one batched
  product per layer (``baddbmm`` over stacked weights), or with only their first layer as one 2x-wide product,
  against two separate networks with fused hidden layers; forward and backward.
- *row micro-batches*: one Q network's forward and backward over the batch in row chunks, each chunk's gradients
  accumulated before the next runs, so a chunk's activations stay in L2 from layer to layer (what a micro-batched
  SAC update would do), against the whole batch at once.
- *attention products in fp32*: setformer's attention scores, softmax and weighted sum computed in fp32 inside the
  bf16 step (the projections stay bf16), as the in-context transformer does; setformer's whole step.

    python benchmarks/dev/bf16-step/variants_probe.py --rounds 5 --steps 5

Each comparison lives in one process and is timed in interleaved rounds by thread CPU time (median over rounds),
so a busy neighbour core slows its variants alike. None of the variants is bit-identical to the step as runs take
it; this probe asks only whether any is faster. Writes ``variants.json`` and ``VARIANTS.md`` beside this script.
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

import torch  # noqa: E402
from einops import rearrange  # noqa: E402
from torch import nn  # noqa: E402

import models.kernels as kernels  # noqa: E402
import models.set_transformer as set_transformer  # noqa: E402
from algos.core.io import atomic_write_json, atomic_write_text, git_commit, machine_description  # noqa: E402
from algos.core.trainer import Trainer, build_config  # noqa: E402


def build(env: str, algo: str, scratch: str):
    config = build_config(env, algo, "benchmark", 0, ["num_threads=1", "bf16=true"])
    algorithm = Trainer(config, run_dir=Path(scratch) / f"{env}-{algo}", progress=False).algorithm
    algorithm.collect_initial_data()
    return algorithm


def interleaved(variants: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Thread CPU ms per call of each variant, one list entry per round; each variant's setup runs before it."""
    for setup, call in variants.values():
        setup()
        call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (setup, call) in variants.items():
            setup()
            started = time.thread_time()
            for _ in range(steps):
                call()
            times[name].append(1e3 * (time.thread_time() - started) / steps)
    return times


# --- row-chunked ReLU backward -----------------------------------------------------------------------------------
whole_backward = kernels.LinearReLU.backward


def chunked_backward(chunks: int):
    def backward(ctx, grad):
        rows, weight, out = ctx.saved_tensors
        grad = grad.reshape(out.shape)
        grad_x = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros(weight.shape[0]) if ctx.needs_input_grad[2] else None
        for part in torch.arange(rows.shape[0]).tensor_split(chunks):
            span = slice(int(part[0]), int(part[-1]) + 1)
            grad_pre = torch.ops.aten.threshold_backward(grad[span], out[span], 0)  # (chunk rows, out)
            if grad_x is not None:
                torch.mm(grad_pre, weight, out=grad_x[span])
            if grad_weight is not None:
                grad_weight += (grad_pre.t() @ rows[span]).float()
            if grad_bias is not None:
                grad_bias += grad_pre.float().sum(0)
        return (None if grad_x is None else grad_x.view(ctx.input_shape)), grad_weight, grad_bias
    return staticmethod(backward)


def chunked_relu_backward(env: str, scratch: str, rounds: int, steps: int) -> dict[str, list[float]]:
    pearl = build(env, "pearl", scratch)

    def use(backward):
        return lambda: setattr(kernels.LinearReLU, "backward", backward)
    variants = {"whole batch (as runs take it)": (use(whole_backward), pearl.train_step)}
    for chunks in (2, 4, 8):
        variants[f"{chunks} row chunks"] = (use(chunked_backward(chunks)), pearl.train_step)
    try:
        return interleaved(variants, rounds, steps)
    finally:
        kernels.LinearReLU.backward = whole_backward


# --- twin Q as one stacked product --------------------------------------------------------------------------------
def stacked_twin_q(env: str, scratch: str, rounds: int, steps: int) -> dict[str, list[float]]:
    pearl = build(env, "pearl", scratch)
    critic, batch = pearl.critic, pearl.protocol.meta_batch * pearl.protocol.batch_size
    layers = [[m for m in q.net if isinstance(m, nn.Linear)] for q in (critic.qf1, critic.qf2)]
    x = torch.randn(batch, layers[0][0].in_features)
    weights = [torch.stack([a.weight.detach(), b.weight.detach()]).requires_grad_() for a, b in zip(*layers)]
    biases = [torch.stack([a.bias.detach(), b.bias.detach()]).requires_grad_() for a, b in zip(*layers)]
    wide_weight = torch.cat([layers[0][0].weight.detach(), layers[1][0].weight.detach()]).requires_grad_()
    wide_bias = torch.cat([layers[0][0].bias.detach(), layers[1][0].bias.detach()]).requires_grad_()
    width = layers[0][0].out_features

    def separate():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q = critic.qf1.net(x).float() + critic.qf2.net(x).float()
        q.square().mean().backward()

    def stacked():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = x.expand(2, -1, -1)  # (2 networks, batch, in)
            for i, (weight, bias) in enumerate(zip(weights, biases)):
                hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
                hidden = torch.relu(hidden) if i < len(weights) - 1 else hidden
            q = hidden.float().sum(0)
        q.square().mean().backward()

    def wide_first_layer():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            both = torch.relu(nn.functional.linear(x, wide_weight, wide_bias))  # (batch, 2 * width)
            q = sum(nn.Sequential(*q_net.net[2:])(half).float()
                    for q_net, half in zip((critic.qf1, critic.qf2), both.split(width, dim=-1)))
        q.square().mean().backward()

    nothing = lambda: None  # noqa: E731
    return interleaved({"two networks, fused layers (as runs take it)": (nothing, separate),
                        "stacked weights, one baddbmm per layer": (nothing, stacked),
                        "first layer one 2x-wide product": (nothing, wide_first_layer)}, rounds, 2 * steps)


# --- row micro-batches -------------------------------------------------------------------------------------------
def row_micro_batches(env: str, scratch: str, rounds: int, steps: int) -> dict[str, list[float]]:
    pearl = build(env, "pearl", scratch)
    q_net, batch = pearl.critic.qf1.net, pearl.protocol.meta_batch * pearl.protocol.batch_size
    x = torch.randn(batch, q_net[0].in_features)

    def micro_batched(chunks: int):
        def call():
            for rows in x.tensor_split(chunks):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    q = q_net(rows).float()
                (q.square().sum() / batch).backward()
        return call
    nothing = lambda: None  # noqa: E731
    return interleaved({("whole batch (as runs take it)" if chunks == 1 else f"{chunks} micro-batches"):
                        (nothing, micro_batched(chunks)) for chunks in (1, 2, 4, 8)}, rounds, 4 * steps)


# --- attention products in fp32 -----------------------------------------------------------------------------------
bf16_attention = set_transformer.MultiheadAttentionBlock.forward


def fp32_attention(self, queries, keys):
    q = rearrange(self.query(queries), "b n (h d) -> b h n d", h=self.num_heads)
    k = rearrange(self.key(keys), "b n (h d) -> b h n d", h=self.num_heads)
    v = rearrange(self.value(keys), "b n (h d) -> b h n d", h=self.num_heads)
    with torch.autocast("cpu", enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        weights = (torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        attended = torch.einsum("bhqk,bhkd->bhqd", weights, v)
    hidden = queries + self.out(rearrange(attended, "b h n d -> b n (h d)"))
    return hidden + self.feedforward(hidden), weights


def attention_in_fp32(env: str, scratch: str, rounds: int, steps: int) -> dict[str, list[float]]:
    setformer = build(env, "setformer", scratch)

    def use(forward):
        return lambda: setattr(set_transformer.MultiheadAttentionBlock, "forward", forward)
    try:
        return interleaved({"bf16 attention products (as runs take it)": (use(bf16_attention), setformer.train_step),
                            "fp32 attention products": (use(fp32_attention), setformer.train_step)}, rounds, steps)
    finally:
        set_transformer.MultiheadAttentionBlock.forward = bf16_attention


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="gradient steps per variant per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    scratch = tempfile.TemporaryDirectory(prefix="variants-probe-")
    started = time.perf_counter()
    comparisons = {
        "row-chunked ReLU backward, PEARL's step, point-robot": chunked_relu_backward("point-robot", scratch.name,
                                                                                     args.rounds, args.steps),
        "twin Q as one stacked product, the critic's two Q networks, point-robot": stacked_twin_q(
            "point-robot", scratch.name, args.rounds, args.steps),
        "row micro-batches, one Q network's forward and backward, point-robot": row_micro_batches(
            "point-robot", scratch.name, args.rounds, args.steps),
        "attention products in fp32, setformer's step, sparse-point-robot": attention_in_fp32(
            "sparse-point-robot", scratch.name, args.rounds, args.steps),
        "attention products in fp32, setformer's step, cheetah-vel": attention_in_fp32(
            "cheetah-vel", scratch.name, args.rounds, args.steps),
    }
    wall_s = time.perf_counter() - started
    command = shlex.join(["python", "benchmarks/dev/bf16-step/variants_probe.py", *sys.argv[1:]])
    medians = {what: {name: statistics.median(values) for name, values in times.items()}
               for what, times in comparisons.items()}
    report = {"command": command, "git_commit": git_commit(), "machine": machine_description(), "wall_time_s": wall_s,
              "cpu_ms_per_call": comparisons, "median_cpu_ms_per_call": medians}
    atomic_write_json(HERE / "variants.json", report)
    lines = [
        "# Four ways to cut the bf16 step's non-matmul time", "",
        f"Generated by `{command}` at commit `{report['git_commit']}` on {report['machine']['cpu']} "
        f"(native bf16: {report['machine']['cpu_native_bf16']}, torch {torch.__version__}) in {wall_s / 60:.1f} min; "
        f"benchmark tier, one thread; {args.rounds} interleaved rounds. Thread CPU ms per call (a gradient step, or "
        "one forward and backward of the two Q networks), median over rounds; the first variant of each comparison "
        "is the code as runs take it. The variants are described in the script's docstring.", ""]
    for what, values in medians.items():
        baseline = next(iter(values.values()))
        lines += [f"## {what}", "", "| variant | CPU ms per call | vs as runs take it |", "|---|---|---|",
                  *(f"| {name} | {value:.1f} | {value / baseline:.2f}x |" for name, value in values.items()), ""]
    atomic_write_text(HERE / "VARIANTS.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
