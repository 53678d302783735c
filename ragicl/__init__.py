"""ragicl: retrieval in-context learning measured against fine-tuning.

Index a whole fine-tuning set, retrieve the most useful labeled examples per query, pack them into the
prompt under the target model's exact token budget, score labels, and measure the gap (total-variation
distance) to the model fine-tuned on the same data.

>>> from ragicl import ExampleIndex, ICLClassifier, read_dataset   # doctest: +SKIP
"""

from ._exceptions import (
    BudgetError,
    DataError,
    EmbedderMismatchError,
    EstimatorFormatError,
    IndexFormatError,
    MissingDependencyError,
    NotFittedError,
    RagiclError,
)
from ._version import __version__
from .data import read_dataset
from .distributed import sharded as _sharded_layout  # noqa: F401  registers the layout: ExampleIndex.load opens it
from .estimators.baselines import KNNVoteClassifier
from .estimators.classifier import ICLClassifier
from .estimators.fusion import FusionClassifier
from .estimators.generation import GenerationReport, ICLGenerator, generation_gap
from .estimators.tune import FusionTuner, TuneResult
from .evaluation.compare import Gap, Report, SystemResult, compare
from .evaluation.predictions import Predictions, load_predictions, save_predictions
from .index.core import ExampleIndex
from .index.embed import Embedder, HashEmbedder, SentenceTransformerEmbedder
from .lm.factory import LMSpec
from .lm.hf import LanguageModel, TransformersLM
from .lm.llamacpp import LlamaCppLM
from .lm.openai import OpenAICompatibleLM
from .models import FinetuneFormatError, finetuned_model_path
from .prompt.pack import Packer, PreparedQuery
from .prompt.retrieve import Retriever
from .prompt.template import PromptTemplate
from .training.config import TrainConfig, TrainConfigError
from .training.reference import train_reference
from .types import Dataset, Example, PackedPrompt, Prediction, Retrieved, SearchResult

__all__ = [
    "BudgetError",
    "DataError",
    "Dataset",
    "Embedder",
    "EmbedderMismatchError",
    "EstimatorFormatError",
    "Example",
    "ExampleIndex",
    "FinetuneFormatError",
    "FusionClassifier",
    "FusionTuner",
    "Gap",
    "GenerationReport",
    "HashEmbedder",
    "ICLClassifier",
    "ICLGenerator",
    "IndexFormatError",
    "KNNVoteClassifier",
    "LMSpec",
    "LanguageModel",
    "LlamaCppLM",
    "MissingDependencyError",
    "NotFittedError",
    "OpenAICompatibleLM",
    "PackedPrompt",
    "Packer",
    "Prediction",
    "Predictions",
    "PreparedQuery",
    "PromptTemplate",
    "RagiclError",
    "Report",
    "Retrieved",
    "Retriever",
    "SearchResult",
    "SentenceTransformerEmbedder",
    "SystemResult",
    "TrainConfig",
    "TrainConfigError",
    "TransformersLM",
    "TuneResult",
    "__version__",
    "compare",
    "finetuned_model_path",
    "generation_gap",
    "load_predictions",
    "read_dataset",
    "save_predictions",
    "train_reference",
]
