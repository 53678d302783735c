"""A simulated clock for the tuner (``ragicl.estimators.tune._now``) and the real LM running on it.

``Clock(stall=..., seed=...)`` is a "loaded" machine: besides the LM work it advances by a random stall
(exponential, seeded) every time it is read. ``ClockedLM`` advances the clock ``cost`` seconds per LM token it
is fed, counts the tokens (every prompt token, plus each continuation's tokens after its first, what
``FusionPlan.lm_tokens`` counts) and replays identical calls from a shared cache, so "a fast machine" and "a
slow, loaded machine" are exact, the same everywhere, and cost one real scoring between them.
"""

from __future__ import annotations

import numpy as np


class Clock:
    def __init__(self, stall: float = 0.0, seed: int = 0) -> None:
        self.t = 0.0
        self.stall = stall
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        if self.stall:
            self.t += float(self.rng.exponential(self.stall))
        return self.t


class ClockedLM:
    def __init__(self, lm, clock: Clock, cost: float, cache: dict) -> None:
        self.lm, self.clock, self.cost, self.cache, self.tokens = lm, clock, cost, cache, 0

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def score_continuations(self, prompts, continuations, *, show_progress=None):
        fed = sum(len(p) for p in prompts) + len(prompts) * sum(len(c) - 1 for c in continuations)
        self.tokens += fed
        self.clock.t += self.cost * fed
        key = (tuple(map(tuple, prompts)), tuple(map(tuple, continuations)))
        if key not in self.cache:
            self.cache[key] = self.lm.score_continuations(prompts, continuations, show_progress=show_progress)
        return self.cache[key]
