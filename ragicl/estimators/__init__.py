"""The user-facing systems: scikit-learn-style estimators over index → prompt → LM.

- ``classifier``: :class:`ICLClassifier` (zero-shot, random-k, retrieved-k, or a fine-tuned checkpoint);
- ``generation``: :class:`ICLGenerator` and the generation gap;
- ``baselines``: the kNN vote, contextual calibration, kNN-prompting;
- ``fusion`` / ``tune``: LM × kNN with candidate labels and calibration, and its choice on dev data ("ragicl best").
"""

from .baselines import CalibratedClassifier, KNNPromptingClassifier, KNNVoteClassifier
from .classifier import ICLClassifier
from .fusion import FusionClassifier
from .generation import ICLGenerator, generation_gap
from .tune import FusionTuner, TuneResult

__all__ = ["CalibratedClassifier", "FusionClassifier", "FusionTuner", "ICLClassifier", "ICLGenerator",
           "KNNPromptingClassifier", "KNNVoteClassifier", "TuneResult", "generation_gap"]
