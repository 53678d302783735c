"""Past one machine: distributed build, sharded exact search and batch inference on Ray.

Ray (``pip install 'ragicl[ray]'``) is imported only by :func:`build_distributed`,
:func:`predict_distributed` and :func:`connect`; a sharded index loads and searches without it
(:func:`load_sharded`, :func:`is_sharded`). See docs/guide/SCALE.md.
"""

from __future__ import annotations

from ._ray import ClusterError, connect
from .build import build_distributed
from .predict import BatchPrediction, DistributedClassifier, load_index, predict_distributed
from .sharded import ShardedIndex, is_sharded, load_sharded, merge_topk

__all__ = ["BatchPrediction", "ClusterError", "DistributedClassifier", "ShardedIndex", "build_distributed",
           "connect", "is_sharded", "load_index", "load_sharded", "merge_topk", "predict_distributed"]
