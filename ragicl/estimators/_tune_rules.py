"""How :class:`~ragicl.estimators.tune.FusionTuner` chooses among the settings it scored on its dev queries.

Everything here is a pure function of the settings' answers on the dev queries (no LM, no clock), so the same
answers give the same choice on any machine, and ``experiments/selection_rules.py`` re-derives every rule's choice
from saved scores.

**Rules.** They choose among nested sets of settings, simplest first: the plain systems (zero-shot,
retrieved-k over every label, the kNN votes k = 8 and 32 plain and weighted), then every vote setting with
them, then every setting. ``"best"``: the best dev accuracy (ties: dev log-loss, then the cheaper setting).
``"one-se"``: the best of the simplest set whose best is within one paired standard error of the overall best.
``"fallback"``: the best setting unless its paired 95 % bootstrap interval against the best plain system
includes 0, then that plain system. ``"crossfit"``: the dev queries are split in halves many times (seeded); in
each split "the best of set S" is chosen on one half and scored on the other, for each set; the set with the
best held-out accuracy (ties: the simpler) then chooses on every dev query. This measures the optimism of
picking the best of a thousand settings on a couple of hundred queries, which a single dev score cannot.

**Weights.** Dev queries are drawn from the training set; the user's queries may be drawn differently. Given
unlabeled queries of the user's, ``"prior"`` weights each dev query by how much more often the kNN vote
predicts its label on the unlabeled queries than on the dev queries (label-prior shift), ``"distance"`` by how
much more common its similarity to its nearest indexed example is among the unlabeled queries (covariate
shift in the one quantity that decides how far the vote can be trusted); ``"both"`` multiplies them. Weighted
accuracy then replaces accuracy in every rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .vote import PLAIN_VOTES, vote_name

KINDS = ("vote", "plain", "fusion")  # simplest first
RULES = ("best", "one-se", "fallback", "crossfit")
WEIGHTINGS = ("none", "prior", "distance", "both")
CROSSFIT_SPLITS = 20  # halvings of the dev queries (each half chooses, the other scores: 40 held-out scores)
DISTANCE_BINS = 5
WEIGHT_CLIP = (0.2, 5.0)  # no dev query counts less than a fifth or more than five times its share


def kind(params: Mapping[str, Any]) -> str:
    """``"vote"`` (the kNN vote alone), ``"plain"`` (retrieval ICL over every label, uncalibrated: retrieved-k
    or zero-shot) or ``"fusion"`` (anything else)."""
    w = float(params["knn_weight"])
    if w >= 1.0:
        return "vote"
    if (w <= 0.0 and params.get("candidates") is None and not params.get("label_aware")
            and params.get("calibration", "none") == "none"):
        return "plain"
    return "fusion"


def plain_name(params: Mapping[str, Any]) -> str | None:
    """The report's name of a plain system ("retrieved-8", "zero-shot", "kNN vote k=32 weighted"), or None.
    Retrieval ICL with another retriever than the tuner's own (``params["search"]`` set) is not a plain
    system: the plain ones are the baselines the report compares with."""
    k = kind(params)
    if k == "plain" and params.get("candidate_mass") is None and params.get("search") is None:
        return f"retrieved-{params['k']}" if params["k"] else "zero-shot"
    if k == "vote" and (params["knn_k"], params["knn_temperature"]) in PLAIN_VOTES:
        return vote_name(params["knn_k"], params["knn_temperature"])
    return None


@dataclass(frozen=True)
class Answers:
    """One setting's answers on the dev queries: its predicted label and the probability it gave the gold
    label, per query; ``cost`` orders settings cheap first (ties in every score go to the cheaper)."""

    params: Mapping[str, Any]
    pred: np.ndarray
    p_gold: np.ndarray
    cost: tuple


@dataclass(frozen=True)
class Choice:
    """A rule's choice: the position of the chosen setting in the answers, and why."""

    index: int
    rule: str
    reason: str


def _matrices(answers: Sequence[Answers], y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    correct = np.stack([a.pred == y for a in answers]).astype(np.float64)
    loss = -np.log(np.clip(np.stack([a.p_gold for a in answers]), 1e-12, None))
    order = sorted(range(len(answers)), key=lambda i: answers[i].cost)
    cost_rank = np.empty(len(answers), dtype=np.int64)
    cost_rank[order] = np.arange(len(answers))
    return correct, loss, cost_rank


def _best(correct: np.ndarray, loss: np.ndarray, cost_rank: np.ndarray, rows: np.ndarray, w: np.ndarray) -> int:
    """Among ``rows`` (setting positions), the best weighted accuracy, then log-loss, then cost."""
    acc = correct[rows] @ w / w.sum()
    ll = loss[rows] @ w / w.sum()
    return int(rows[np.lexsort((cost_rank[rows], np.round(ll, 9), -np.round(acc, 12)))[0]])


def _paired(correct: np.ndarray, a: int, b: int, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean and standard error of the per-query difference ``correct[a] - correct[b]``."""
    d = correct[a] - correct[b]
    mean = float(d @ w / w.sum())
    return mean, float(np.sqrt(np.sum(w ** 2 * (d - mean) ** 2)) / w.sum())


def choose(answers: Sequence[Answers], y: np.ndarray, rule: str = "best", weights: np.ndarray | None = None, *,
           seed: int = 0) -> Choice:
    """The setting ``rule`` chooses among ``answers`` on dev labels ``y`` (query ``weights``: None = equal)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    if not answers:
        raise ValueError("no setting was scored: nothing to choose from.")
    y = np.asarray(y)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    correct, loss, cost_rank = _matrices(answers, y)
    kinds = np.array([kind(a.params) for a in answers])
    every = np.arange(len(answers))
    best = _best(correct, loss, cost_rank, every, w)
    acc = "weighted dev accuracy" if weights is not None else "dev accuracy"
    if rule == "best":
        return Choice(best, rule, f"best {acc}, ties broken by log-loss, then by cost")
    pools = _pools(answers, kinds)
    if rule == "one-se":
        for name, rows in list(pools.items())[:-1]:
            if not len(rows):
                continue
            if best in rows:
                return Choice(best, rule, f"best {acc}, one of {name}")
            pick = _best(correct, loss, cost_rank, rows, w)
            d, se = _paired(correct, best, pick, w)
            if d <= se:
                return Choice(pick, rule, f"the best of {name} is within one standard error of the best setting "
                                          f"({acc} {d:+.3f} behind, SE {se:.3f}): the simpler choice")
        return Choice(best, rule, f"best {acc}; nothing simpler within one standard error of it")
    if rule == "fallback":
        named = pools["the plain systems"]
        if not len(named) or best in named:
            return Choice(best, rule, f"best {acc} (a plain system)")
        rival = _best(correct, loss, cost_rank, named, w)
        lo, hi = _interval(correct[best] - correct[rival], w, seed)
        if lo <= 0:
            return Choice(rival, rule, f"the best setting's 95% interval against {plain_name(answers[rival].params)}"
                                       f" on the dev queries [{lo:+.3f}, {hi:+.3f}] includes 0: that plain system")
        return Choice(best, rule, f"best {acc}, above the best plain system: [{lo:+.3f}, {hi:+.3f}]")
    return _crossfit(correct, loss, cost_rank, pools, w, seed, acc)


def _interval(d: np.ndarray, w: np.ndarray, seed: int) -> tuple[float, float]:
    if np.all(w == w[0]):
        from ..stats import bootstrap_ci

        ci = bootstrap_ci(d, seed=seed)
        return float(ci.low), float(ci.high)
    mean = float(d @ w / w.sum())
    se = float(np.sqrt(np.sum(w ** 2 * (d - mean) ** 2)) / w.sum())
    return mean - 1.96 * se, mean + 1.96 * se


def _pools(answers: Sequence[Answers], kinds: np.ndarray) -> dict[str, np.ndarray]:
    """The nested sets of settings the rules choose among, simplest first: the plain systems (zero-shot,
    retrieved-k, the kNN votes k = 8 and 32), then every vote setting with them, then every setting."""
    every = np.arange(len(answers))
    named = np.array([plain_name(a.params) is not None for a in answers])
    return {"the plain systems": every[named], "the votes and plain systems": every[named | (kinds == "vote")],
            "every setting": every}


def _crossfit(correct: np.ndarray, loss: np.ndarray, cost_rank: np.ndarray, pools: dict[str, np.ndarray],
              w: np.ndarray, seed: int, acc: str) -> Choice:
    n = correct.shape[1]
    every = pools["every setting"]
    pools = {name: rows for name, rows in pools.items() if len(rows)}
    rng = np.random.default_rng(seed)
    held = {name: [] for name in pools}
    for _ in range(CROSSFIT_SPLITS if n >= 4 else 0):
        half = np.zeros(n, dtype=bool)
        half[rng.permutation(n)[: n // 2]] = True
        for fit, score in ((half, ~half), (~half, half)):
            wf, ws = w * fit, w * score
            for name, rows in pools.items():
                pick = _best(correct, loss, cost_rank, rows, wf)
                held[name].append(float(correct[pick] @ ws / ws.sum()))
    if not held[next(iter(held))]:
        return Choice(_best(correct, loss, cost_rank, every, w), "crossfit", f"best {acc} (too few dev queries "
                                                                             "to cross-fit)")
    means = {name: float(np.mean(v)) for name, v in held.items()}
    winner = max(means, key=lambda name: (round(means[name], 12), -list(pools).index(name)))
    scores = ", ".join(f"{name} {m:.3f}" for name, m in means.items())
    return Choice(_best(correct, loss, cost_rank, pools[winner], w), "crossfit",
                  f"choosing among {winner} did best on held-out halves of the dev queries ({scores}; "
                  f"{2 * CROSSFIT_SPLITS} halves, ties to the simpler); then the best {acc} among them")


# ----------------------------------------------------------------------------- dev-query weights


def _normalized(w: np.ndarray) -> np.ndarray:
    w = np.clip(w / w.mean(), *WEIGHT_CLIP)
    return w / w.mean()


def prior_weights(y: np.ndarray, dev_vote: np.ndarray, unlabeled_vote: np.ndarray) -> np.ndarray:
    """Per dev query: how much more often the vote predicts its label on the unlabeled queries than on the dev
    queries (``dev_vote``/``unlabeled_vote``: ``(n, L)`` vote distributions), clipped, mean 1."""
    n_labels = dev_vote.shape[1]
    eps = 0.5 / max(len(dev_vote), 1)
    ratio = (unlabeled_vote.mean(0) + eps) / (dev_vote.mean(0) + eps)
    return _normalized(ratio[np.asarray(y)] if n_labels else np.ones(len(y)))


def distance_weights(dev_similarity: np.ndarray, unlabeled_similarity: np.ndarray,
                     bins: int = DISTANCE_BINS) -> np.ndarray:
    """Per dev query: the share of unlabeled queries over the share of dev queries in its bin of similarity to
    the nearest indexed example (bins: quantiles of both together), clipped, mean 1."""
    both = np.concatenate([dev_similarity, unlabeled_similarity])
    edges = np.quantile(both, np.linspace(0, 1, bins + 1)[1:-1])
    dev_bin, unl_bin = np.searchsorted(edges, dev_similarity), np.searchsorted(edges, unlabeled_similarity)
    dev_share = np.bincount(dev_bin, minlength=bins) / len(dev_bin)
    unl_share = np.bincount(unl_bin, minlength=bins) / len(unl_bin)
    return _normalized(unl_share[dev_bin] / np.maximum(dev_share[dev_bin], 1e-12))


@dataclass(frozen=True)
class Shift:
    """What the unlabeled queries say about the gap between the dev queries and the user's: the vote's label
    distribution on each, the median similarity to the nearest indexed example of each, and the weights."""

    n_unlabeled: int
    prior_tv: float
    dev_similarity: float
    unlabeled_similarity: float
    weights: np.ndarray | None
    weighting: str

    def describe(self) -> str:
        return (f"{self.n_unlabeled} unlabeled queries: the vote's label distribution moves by TV "
                f"{self.prior_tv:.3f} from the dev queries', median similarity to the nearest indexed example "
                f"{self.unlabeled_similarity:.3f} against {self.dev_similarity:.3f}; dev queries weighted: "
                f"{self.weighting}")


def estimate_shift(y: np.ndarray, dev_labels: np.ndarray, dev_scores: np.ndarray, unl_labels: np.ndarray,
                   unl_scores: np.ndarray, n_labels: int, weighting: str = "none") -> Shift:
    """:class:`Shift` from the neighbours (``(n, K)`` label ids and cosine scores, nearest first) of the dev
    queries (their own copies excluded) and of the unlabeled queries; the kNN vote here is the plain k=32
    one."""
    from .fusion import knn_distribution

    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    dev_vote = knn_distribution(dev_labels, dev_scores, n_labels, k=32, temperature=None, smoothing=0.0)
    unl_vote = knn_distribution(unl_labels, unl_scores, n_labels, k=32, temperature=None, smoothing=0.0)
    dev_sim, unl_sim = dev_scores[:, 0].astype(np.float64), unl_scores[:, 0].astype(np.float64)
    w = None
    if weighting in ("prior", "both"):
        w = prior_weights(y, dev_vote, unl_vote)
    if weighting in ("distance", "both"):
        d = distance_weights(dev_sim, unl_sim)
        w = d if w is None else _normalized(w * d)
    tv = 0.5 * float(np.abs(dev_vote.mean(0) - unl_vote.mean(0)).sum())
    return Shift(len(unl_labels), tv, float(np.median(dev_sim)), float(np.median(unl_sim)), w, weighting)
