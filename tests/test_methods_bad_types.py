"""Options of the wrong type give an InputError naming the option, as a user runs the methods.

The test suite checks every annotation at run time (conftest's import hook), which would refuse these
calls before the methods' own checks run; users have no such checker, so the calls run in one plain
subprocess and each case is checked here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SETUP = """
import json, sys
import torch
import workbench
from workbench.errors import WorkbenchError
from workbench.methods import Ablation, LogitDiff, ablate, ablation_sweep, activation_patching, attribution_patching
from workbench.methods import direct_logit_attribution
from workbench.methods import path_patching
from workbench.methods import circuit_faithfulness, edge_attribution, edge_patching, faithfulness_curve

torch.manual_seed(0)
model = workbench.GPT(workbench.GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)).eval()
toks = torch.randint(0, 50000, (2, 6), generator=torch.Generator().manual_seed(0))
metric = LogitDiff(1, 2)
out = {}
for name, call in CASES.items():
    try:
        eval(call)
        out[name] = ["no error", ""]
    except WorkbenchError as e:
        out[name] = [type(e).__name__, str(e)]
    except Exception as e:  # what the user would see as a traceback
        out[name] = ["not a WorkbenchError: " + type(e).__name__, str(e)]
print(json.dumps(out))
"""

# case -> (call, the message expected)
CASES = {
    # ablate / Ablation
    "ablation not an Ablation": ("ablate(model, toks, 'zero')",
                                 r"ablation must be an Ablation, e.g. Ablation\('zero', heads=\[\(0, 1\)\]\), got str 'zero'"),
    "reference an int": ("ablate(model, toks, Ablation('mean', heads=[(0, 0)]), reference=5)",
                         "reference must be a torch.Tensor of token ids, a string or a list of strings, got int"),
    "reference a list of ids": ("ablate(model, toks, Ablation('mean', heads=[(0, 0)]), reference=[[1] * 6])",
                                "reference must be a torch.Tensor of token ids"),
    "seed a string": ("ablate(model, toks, Ablation('resample', heads=[(0, 0)]), seed='1')",
                      "seed must be an integer, got str '1'"),
    "heads of ints": ("Ablation(heads=[0, 1])", r"each of heads must be a \(layer, index\) pair, e.g. \(0, 1\), got int 0"),
    "heads a string": ("Ablation(heads='L0H1')", r"heads must be a list of \(layer, head\) pairs, got str 'L0H1'"),
    "head a float": ("Ablation(heads=[(0, 1.5)])", "the head in heads must be an integer, got float 1.5"),
    "neuron layer a string": ("Ablation(neurons=[('a', 1)])", "the layer in neurons must be an integer, got str 'a'"),
    "attn_layers an int": ("Ablation(attn_layers=1)", "attn_layers must be a list of layer indices, got int 1"),
    "mlp_layers with None": ("Ablation(mlp_layers=[None])", "each of mlp_layers must be an integer, got NoneType None"),
    # ablation_sweep
    "sweep seed a float": ("ablation_sweep(model, toks, metric, method='resample', seed=1.5, progress=False)",
                           "seed must be an integer, got float 1.5"),
    "sweep max_batch a float": ("ablation_sweep(model, toks, metric, max_batch=2.5, progress=False)",
                                "max_batch must be an integer, got float 2.5"),
    "sweep progress a string": ("ablation_sweep(model, toks, metric, progress='yes')",
                                r"progress must be True \(a console bar\), False \(none\) or a callable.*got str 'yes'"),
    "sweep method None": ("ablation_sweep(model, toks, metric, method=None, progress=False)",
                          "unknown ablation method None; allowed: zero, mean, resample"),
    # activation_patching and attribution_patching (one shared prologue)
    "patching max_batch a string": ("activation_patching(model, toks, toks, metric, max_batch='8', progress=False)",
                                    "max_batch must be an integer, got str '8'"),
    "patching progress an int": ("activation_patching(model, toks, toks, metric, progress=1)",
                                 r"progress must be True \(a console bar\), False \(none\) or a callable.*got int 1"),
    **{f"{fn} {what}": (f"{fn}(model, toks, toks, {args})", message) for fn in ("activation_patching", "attribution_patching")
       for what, args, message in (
           ("layers an int", "metric, layers=1", "layers must be a list of layer indices, got int 1"),
           ("layers a string", "metric, layers='01'", "layers must be a list of layer indices, got str '01'"),
           ("layer a float", "metric, layers=[1.5]", "each of layers must be an integer, got float 1.5"),
           ("target None", "metric, target=None", "unknown patching target None; allowed: resid_pre"),
           ("metric an int", "3", "metric must be a Metric or a callable logits -> scalar, got int"),
       )},
    "activation_patching corrupted None": ("activation_patching(model, toks, None, metric, progress=False)",
                                           "corrupted_tokens must be a torch.Tensor of token ids.*got NoneType"),
    "attribution_patching clean None": ("attribution_patching(model, None, toks, metric)",
                                        "clean_tokens must be a torch.Tensor of token ids.*got NoneType"),
    # direct_logit_attribution
    "dla pos a float": ("direct_logit_attribution(model, toks, 1, pos=1.0)", "pos must be an integer, got float 1.0"),
    "dla by None": ("direct_logit_attribution(model, toks, 1, by=None)",
                    "by must be one of 'head', 'layer', 'neuron', 'component', got NoneType None"),
    "dla direction None": ("direct_logit_attribution(model, toks, None)",
                           r"metric_direction must be a one-token string.*got NoneType None"),
    "dla direction a list": ("direct_logit_attribution(model, toks, [1, 2])",
                             r"metric_direction must be a one-token string.*got list"),
    # path_patching
    "path receivers an int": ("path_patching(model, toks, toks, metric, receivers=1, progress=False)",
                              "receivers must be 'logits' or a non-empty list of .layer, head, input., got int 1"),
    "path receiver layer a float": ("path_patching(model, toks, toks, metric, receivers=[(1.0, 0, 'k')], progress=False)",
                                    "a receiver's layer must be an integer, got float 1.0"),
    "path receiver input None": ("path_patching(model, toks, toks, metric, receivers=[(1, 0, None)], progress=False)",
                                 "a receiver's input must be one of q, k, v .*got None"),
    "path senders a dict": ("path_patching(model, toks, toks, metric, receivers='logits', senders={}, progress=False)",
                            "senders must be 'heads', 'mlps' or a non-empty list"),
    "path sender head a string": ("path_patching(model, toks, toks, metric, receivers='logits', senders=[(0, 'h1')], "
                                  "progress=False)", "a sender's head .or 'mlp'. must be an integer, got str 'h1'"),
    "path metric an int": ("path_patching(model, toks, toks, 3, receivers='logits', progress=False)",
                           "metric must be a Metric or a callable logits -> scalar, got int"),
    # circuits
    "edge_attribution steps a string": ("edge_attribution(model, toks, toks, metric, method='eap-ig', steps='5')",
                                        "steps must be an integer, got str '5'"),
    "edge_attribution method None": ("edge_attribution(model, toks, toks, metric, method=None)",
                                     "method must be one of eap, eap-ig, got NoneType None"),
    "edge_patching edges a string": ("edge_patching(model, toks, toks, metric, 'input->logits', progress=False)",
                                     "edges must be a list of edge labels"),
    "edge_patching edge a float": ("edge_patching(model, toks, toks, metric, [1.0], progress=False)",
                                   "float 1.0 is not an edge"),
    "circuit_faithfulness circuit None": ("circuit_faithfulness(model, toks, toks, metric, None)",
                                          "edges must be a list of edge labels.*got NoneType"),
    "faithfulness_curve points a float": ("faithfulness_curve(model, toks, toks, metric, ['input->logits'], points=2.5)",
                                          "points must be an integer, got float 2.5"),
}


@pytest.fixture(scope="module")
def outcomes():
    script = f"CASES = {json.dumps({name: call for name, (call, _) in CASES.items()})}\n" + SETUP
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_type_is_an_input_error(outcomes, case):
    kind, message = outcomes[case]
    assert kind == "InputError", f"{case}: {kind}: {message}"
    assert re.search(CASES[case][1], message), message
