"""Integrations with the tools people already use.

- ``ragicl.integrations.langchain``: ``RagiclExampleSelector`` (token-budgeted few-shot selection for
  LangChain prompt templates) and ``RagiclRetriever`` (an index as a LangChain retriever).
- ``ragicl.integrations.lm_eval``: ``RagiclSampler``, a retrieval few-shot sampler for lm-evaluation-harness.

Each imports its framework lazily and says how to install it when it is missing.
"""
