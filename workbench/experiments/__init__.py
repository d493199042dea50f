"""Registered experiments (config dataclass + run function) and running, recording and replaying them.

    from workbench.experiments import run_experiment, replay, AttentionHeadsConfig
    run = run_experiment("attention_heads", AttentionHeadsConfig(seq_len=10), root="runs")
    print(replay(run.path).format())
"""

from workbench.experiments.core import (
    EXPERIMENTS,
    Experiment,
    ExperimentConfig,
    ReplayReport,
    Run,
    config_from_dict,
    get_experiment,
    load_experiment_model,
    read_config_file,
    register,
    replay,
    run_experiment,
)
from workbench.experiments.attention_heads import AttentionHeadsConfig  # noqa: E402  (registers)

__all__ = [
    "EXPERIMENTS", "Experiment", "ExperimentConfig", "ReplayReport", "Run", "config_from_dict", "get_experiment",
    "load_experiment_model", "read_config_file", "register", "replay", "run_experiment", "AttentionHeadsConfig",
]
