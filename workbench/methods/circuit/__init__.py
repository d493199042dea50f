"""Circuit discovery on the edge graph of a GPT: graph (`CircuitGraph`: nodes, inputs, edges),
forward (the model run with one residual stream per downstream input), attribution (EAP, EAP-IG
edge scores), patching (exact edge patching on the packed engine), faithfulness (circuits' runs,
faithfulness and its curve over a ranking)."""

from workbench.methods.circuit.attribution import EdgeScores, edge_attribution
from workbench.methods.circuit.faithfulness import (
    Faithfulness, circuit_faithfulness, evaluate_circuits, faithfulness_curve,
    smallest_circuit,
)
from workbench.methods.circuit.graph import CircuitGraph
from workbench.methods.circuit.patching import EdgePatchingResult, edge_patching

__all__ = [
    "CircuitGraph", "EdgeScores", "edge_attribution", "EdgePatchingResult", "edge_patching",
    "Faithfulness", "circuit_faithfulness", "evaluate_circuits", "faithfulness_curve",
    "smallest_circuit",
]
