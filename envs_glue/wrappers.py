"""Action scaling: agents always act in ``[-1, 1]^action_dim``."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ScaledActionWrapper(gym.ActionWrapper):
    """Clip an agent action to ``[-1, 1]`` and map it affinely onto the environment's action bounds."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        box = env.action_space
        if not isinstance(box, spaces.Box) or not (np.all(np.isfinite(box.low)) and np.all(np.isfinite(box.high))):
            raise TypeError(f"ScaledActionWrapper needs a bounded Box action space, got {box}")
        self._low = box.low.astype(np.float64)
        self._high = box.high.astype(np.float64)
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=box.shape, dtype=np.float32)

    def action(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return self._low + (action + 1.0) * 0.5 * (self._high - self._low)
