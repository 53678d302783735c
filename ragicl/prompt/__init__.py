"""The prompt stage: choose demonstrations for a query, render them, pack them under an exact token budget.

- ``retrieve``: :class:`Retriever` (top-k, balanced, MMR, random) over an index;
- ``template``: :class:`PromptTemplate` (example format, instruction, verbalizer, chat mode);
- ``pack``: :class:`Packer`, exact-token packing of a query with as many candidates as fit;
- ``step``: :class:`PromptStep` (retrieve, then pack) and :func:`make_packer`, used by every ICL system.
"""

from .pack import Packer, PreparedQuery
from .retrieve import Retriever
from .step import PromptStep, make_packer
from .template import PromptTemplate

__all__ = ["Packer", "PreparedQuery", "PromptStep", "PromptTemplate", "Retriever", "make_packer"]
