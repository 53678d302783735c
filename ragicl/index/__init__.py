"""The index stage: embed every example, store it with FAISS, search it, persist it.

- ``embed``: the ``Embedder`` protocol, the default sentence-transformers embedder, a hash fake, precomputed vectors;
- ``core``: :class:`ExampleIndex` (``build``, ``from_vectors``, ``add``, ``search``, ``save``, ``load``);
- ``folder``: the saved index folder (versioned layout, manifest as the one commit point, checksums);
- ``search`` / ``device`` / ``torch_search``: query checks, per-call parameters, where a search runs.
"""

from .core import ExampleIndex, build_and_save
from .embed import Embedder, HashEmbedder, SentenceTransformerEmbedder, get_embedder

__all__ = ["Embedder", "ExampleIndex", "HashEmbedder", "SentenceTransformerEmbedder", "build_and_save", "get_embedder"]
