"""Registered experiments (config dataclass + run function) and running, recording and replaying them.

    from workbench.experiments import run_experiment, replay, AttentionHeadsConfig
    run = run_experiment("attention_heads", AttentionHeadsConfig(seq_len=10), root="runs")
    print(replay(run.path).format())

Experiments: attention_heads, logit_lens, activation_patching, ablate_heads, dla, path_patching,
circuit (`EXPERIMENTS`).
"""

from workbench.experiments.core import (
    EXPERIMENTS,
    Experiment,
    ExperimentConfig,
    Run,
    config_from_dict,
    get_experiment,
    load_experiment_model,
    read_config_file,
    register,
    run_experiment,
    with_tokens,
)
from workbench.experiments.replaying import ReplayReport, replay

# Importing each experiment module registers it.
from workbench.experiments.ablate_heads import AblateHeadsConfig  # noqa: E402
from workbench.experiments.activation_patching import ActivationPatchingConfig  # noqa: E402
from workbench.experiments.attention_heads import AttentionHeadsConfig  # noqa: E402
from workbench.experiments.circuit import CircuitConfig  # noqa: E402
from workbench.experiments.dla import DLAConfig  # noqa: E402
from workbench.experiments.logit_lens import LogitLensConfig  # noqa: E402
from workbench.experiments.path_patching import PathPatchingConfig  # noqa: E402

__all__ = [
    "EXPERIMENTS", "Experiment", "ExperimentConfig", "ReplayReport", "Run", "config_from_dict", "get_experiment",
    "load_experiment_model", "read_config_file", "register", "replay", "run_experiment", "with_tokens",
    "AblateHeadsConfig", "ActivationPatchingConfig", "AttentionHeadsConfig", "CircuitConfig", "DLAConfig",
    "LogitLensConfig", "PathPatchingConfig",
]
