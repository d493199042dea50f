"""Research methods built on the hooked model: one module per method.

metrics (logit_diff, token_logprob, token_prob, kl_divergence, normalize, and the `Metric`
classes sweeps take), logit_lens, patching (activation patching), attribution (attribution
patching), ablation (`Ablation`, `ablate`, `ablation_sweep`), head_detectors, prompts (the
generators), datasets (`PromptSet`: prompt files and datasets), statistics (`bootstrap_ci`), dla
(direct logit attribution), path_patching (`path_patching`: which senders reach which receivers),
circuit (the edge graph, EAP / EAP-IG edge attribution, exact edge patching, circuit faithfulness).
"""

from workbench.methods.ablation import Ablation, AblationResult, ablate, ablation_hooks, ablation_sweep
from workbench.methods.attribution import attribution_patching
from workbench.methods.datasets import PromptSet
from workbench.methods.dla import DLAResult, direct_logit_attribution
from workbench.methods.circuit import (
    CircuitGraph,
    EdgePatchingResult,
    EdgeScores,
    Faithfulness,
    circuit_faithfulness,
    edge_attribution,
    edge_patching,
    faithfulness_curve,
    smallest_circuit,
)
from workbench.methods.head_detectors import (
    DETECTORS,
    HeadScores,
    duplicate_token_scores,
    head_scores,
    induction_scores,
    previous_token_scores,
)
from workbench.methods.logit_lens import LogitLensResult, logit_lens
from workbench.methods.metrics import (
    CustomMetric,
    KLDivergence,
    LogitDiff,
    Metric,
    NextTokenLogProb,
    ProbDiff,
    TokenLogProb,
    TokenProb,
    kl_divergence,
    logit_diff,
    normalize,
    token_logprob,
    token_prob,
)
from workbench.methods.path_patching import PathPatchingResult, path_patching
from workbench.methods.patching import TARGETS, PatchingResult, activation_patching
from workbench.methods.prompts import (
    GreaterThanPrompts,
    InductionPrompts,
    IOIPrompts,
    greater_than_prompts,
    induction_prompts,
    ioi_prompts,
    repeated_tokens,
)
from workbench.methods.statistics import bootstrap_ci

__all__ = [
    "Ablation", "AblationResult", "ablate", "ablation_hooks", "ablation_sweep",
    "attribution_patching",
    "DLAResult", "direct_logit_attribution",
    "CircuitGraph", "EdgeScores", "EdgePatchingResult", "Faithfulness", "edge_attribution", "edge_patching",
    "circuit_faithfulness", "faithfulness_curve", "smallest_circuit",
    "DETECTORS", "HeadScores", "head_scores", "induction_scores", "previous_token_scores", "duplicate_token_scores",
    "LogitLensResult", "logit_lens",
    "Metric", "LogitDiff", "NextTokenLogProb", "TokenLogProb", "TokenProb", "KLDivergence", "ProbDiff", "CustomMetric",
    "logit_diff", "token_logprob", "token_prob", "kl_divergence", "normalize",
    "TARGETS", "PatchingResult", "activation_patching",
    "PathPatchingResult", "path_patching",
    "IOIPrompts", "ioi_prompts", "InductionPrompts", "induction_prompts", "repeated_tokens",
    "GreaterThanPrompts", "greater_than_prompts", "PromptSet", "bootstrap_ci",
]
