"""Networks: MLP building blocks, the tanh-Gaussian policy and the set transformer."""
from models.mlp import build_mlp, build_qf, build_vf, count_parameters
from models.policy import TanhGaussianPolicy, build_policy

__all__ = ["build_mlp", "build_qf", "build_vf", "build_policy", "TanhGaussianPolicy", "count_parameters"]
