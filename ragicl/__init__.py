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
from .baselines import KNNVoteClassifier
from .classifier import ICLClassifier
from .data import read_dataset
from .embed import Embedder, HashEmbedder, SentenceTransformerEmbedder
from .evaluate import Gap, Report, SystemResult, compare
from .fusion import FusionClassifier
from .generation import GenerationReport, ICLGenerator, generation_gap
from .index import ExampleIndex
from .lm import LanguageModel, TransformersLM
from .pack import Packer, PreparedQuery
from .reference import train_reference
from .retrieve import Retriever
from .template import PromptTemplate
from .train_config import TrainConfig, TrainConfigError
from .tune import FusionTuner, TuneResult
from .types import Dataset, Example, PackedPrompt, Prediction, Retrieved, SearchResult

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "DataError",
    "Dataset",
    "Embedder",
    "EmbedderMismatchError",
    "EstimatorFormatError",
    "Example",
    "ExampleIndex",
    "FusionClassifier",
    "FusionTuner",
    "Gap",
    "GenerationReport",
    "HashEmbedder",
    "ICLClassifier",
    "ICLGenerator",
    "IndexFormatError",
    "KNNVoteClassifier",
    "LanguageModel",
    "MissingDependencyError",
    "NotFittedError",
    "PackedPrompt",
    "Packer",
    "Prediction",
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
    "generation_gap",
    "read_dataset",
    "train_reference",
]
