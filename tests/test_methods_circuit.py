"""Circuit discovery (`workbench.methods.circuit`) against hand-written references: hooks that give one
downstream input (one head's q, k or v, one MLP's input, the logits) its own residual stream, autograd
on those, and a planted model whose answer flows through a known path."""

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench.errors import InputError
from workbench.hooks import act_name
from workbench.methods import LogitDiff, NextTokenLogProb
from workbench.methods.circuit import (
    CircuitGraph, circuit_faithfulness, edge_attribution, edge_patching, evaluate_circuits, faithfulness_curve,
)


# ---------------------------------------------------------------------- the hand-written reference
def inputs_of(model):
    """Every downstream input as (label, kind, layer, head), in forward order."""
    H = model.cfg.n_head
    out = []
    for l in range(model.cfg.n_layer):
        out += [(f"L{l}H{h}.{x}", x, l, h) for x in "qkv" for h in range(H)]
        out.append((f"MLP{l}", "mlp", l, None))
    return out + [("logits", "logits", None, None)]


def hooked_logits(model, tokens, changes, *, embed=None):
    """Logits of a forward in which downstream input `label` reads resid + changes[label]
    ([batch pos d_model]), each through its own LayerNorm, by hooks on q / k / v, the MLP's pre-activation
    and the final residual. `embed`: replaces the token embedding (hook_embed)."""
    seen, hooks = {}, []
    if embed is not None:
        hooks.append((act_name("embed"), lambda x, hook: embed))

    def keep(x, hook):
        seen[hook.name] = x

    def ln(block_ln, x):
        return F.layer_norm(x, x.shape[-1:], block_ln.weight, block_ln.bias, block_ln.eps)

    for l, block in enumerate(model.blocks):
        hooks += [(act_name("resid_pre", l), keep), (act_name("resid_mid", l), keep)]
        for i, kind in enumerate("qkv"):
            W, b = (block.attn.W_Q, block.attn.W_K, block.attn.W_V)[i], (block.attn.b_Q, block.attn.b_K, block.attn.b_V)[i]

            def qkv_hook(x, hook, l=l, kind=kind, W=W, b=b, block=block):
                x = x.clone()
                for h in range(model.cfg.n_head):
                    change = changes.get(f"L{l}H{h}.{kind}")
                    if change is not None:
                        x[:, :, h] = ln(block.ln1, seen[act_name("resid_pre", l)] + change) @ W[h] + b[h]
                return x

            hooks.append((act_name(kind, l), qkv_hook))

        def pre_hook(x, hook, l=l, block=block):
            change = changes.get(f"MLP{l}")
            if change is None:
                return x
            return ln(block.ln2, seen[act_name("resid_mid", l)] + change) @ block.mlp.W_in + block.mlp.b_in

        hooks.append((act_name("pre", l), pre_hook))
    if "logits" in changes:
        hooks.append((act_name("resid_post", model.cfg.n_layer - 1), lambda x, hook: x + changes["logits"]))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def node_outputs_by_hand(model, tokens):
    """{node label: output [batch pos d_model]}: embed + pos_embed, each head's z W_O, each mlp_out."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        out = {"input": cache["embed"] + cache["pos_embed"]}
        for l, block in enumerate(model.blocks):
            for h in range(model.cfg.n_head):
                out[f"L{l}H{h}"] = cache["z", l][:, :, h] @ block.attn.W_O[h]
            out[f"MLP{l}"] = cache["mlp_out", l]
    return out


def input_grads_by_hand(model, tokens, metric, *, embed=None):
    """d metric / d (each downstream input's residual), by autograd on zero changes."""
    eps = {label: torch.zeros(*tokens.shape, model.cfg.d_model, requires_grad=True) for label, *_ in inputs_of(model)}
    value = metric(hooked_logits(model, tokens, eps, embed=embed))
    grads = torch.autograd.grad(value, list(eps.values()))
    return {label: g.detach() for label, g in zip(eps, grads)}


@pytest.fixture(scope="module")
def model():
    """A random 2-layer, 4-head GPT with weights large enough for edges to matter (effects ~0.1-1),
    random biases and LayerNorm weights."""
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)).eval()
    model.init_weights(std=0.15)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "ln" in name:
                p.normal_(1, 0.2)
    return model


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 50257, (3, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = torch.randint(0, 50257, (3,), generator=g)
    corrupted[:, 6] = torch.randint(0, 50257, (3,), generator=g)
    return clean, corrupted


METRICS = {
    "logit_diff": lambda clean: LogitDiff(torch.tensor([11, 500, 7]), torch.tensor([3, 3, 900])),
    "next_token_logprob": lambda clean: NextTokenLogProb(clean, positions=(4, 6, 7)),
}


# ---------------------------------------------------------------------- the graph
def test_graph_of_gpt2_small_shape():
    graph = CircuitGraph(12, 12)
    assert (len(graph.upstream), len(graph.downstream), len(graph)) == (157, 445, 32491)
    df = graph.to_frame()
    assert list(df.columns[:3]) == ["edge", "upstream", "downstream"]
    # a head in block l reads the input and blocks < l; an MLP also its own block's heads
    reads = df.groupby("downstream").upstream.apply(set)
    assert reads["L0H3.k"] == {"input"}
    assert reads["MLP0"] == {"input"} | {f"L0H{h}" for h in range(12)}
    assert "MLP1" in reads["L2H0.v"] and "L2H0" not in reads["MLP1"] and len(reads["logits"]) == 157
    ok = (df.upstream_layer < df.downstream_layer) | ((df.upstream_layer == df.downstream_layer) & (df.input == "mlp"))
    assert ok.all()


# ---------------------------------------------------------------------- (1) EAP and EAP-IG
@pytest.mark.parametrize("metric_name", list(METRICS))
def test_eap_equals_autograd_per_edge(model, pair, metric_name):
    clean, corrupted = pair
    metric = METRICS[metric_name](clean)
    scores = edge_attribution(model, clean, corrupted, metric, method="eap")
    clean_out, corrupted_out = node_outputs_by_hand(model, clean), node_outputs_by_hand(model, corrupted)
    grads = input_grads_by_hand(model, clean, metric)
    expected = torch.tensor([
        float(((corrupted_out[e.split("->")[0]] - clean_out[e.split("->")[0]]) * grads[e.split("->")[1]]).sum())
        for e in scores.graph.edges
    ])
    assert len(expected) == 110
    torch.testing.assert_close(scores.scores, expected, atol=1e-4, rtol=0)
    assert scores.scores.abs().max() > 1e-2  # not trivially zero
    assert scores.clean_value == pytest.approx(float(metric(model(clean)).detach()), abs=1e-5)
    assert scores.corrupted_value == pytest.approx(float(metric(model(corrupted)).detach()), abs=1e-5)


def test_eap_per_prompt_scores_are_each_prompts_own(model, pair):
    clean, corrupted = pair
    answer, wrong = torch.tensor([11, 500, 7]), torch.tensor([3, 3, 900])
    scores = edge_attribution(model, clean, corrupted, LogitDiff(answer, wrong))
    for b in range(3):
        one = edge_attribution(model, clean[b : b + 1], corrupted[b : b + 1], LogitDiff(int(answer[b]), int(wrong[b])))
        torch.testing.assert_close(scores.per_prompt[b], one.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores.per_prompt.mean(0), scores.scores)


def test_eap_ig_equals_a_hand_loop_over_interpolation_points(model, pair):
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    steps = 3
    scores = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=steps)
    clean_out, corrupted_out = node_outputs_by_hand(model, clean), node_outputs_by_hand(model, corrupted)
    e_clean, e_corrupted = model.embed(clean), model.embed(corrupted)
    mean_grads = {}
    for k in range(1, steps + 1):
        grads = input_grads_by_hand(model, clean, metric, embed=e_corrupted + k / steps * (e_clean - e_corrupted))
        for label, g in grads.items():
            mean_grads[label] = mean_grads.get(label, 0) + g / steps
    expected = torch.tensor([
        float(((corrupted_out[e.split("->")[0]] - clean_out[e.split("->")[0]]) * mean_grads[e.split("->")[1]]).sum())
        for e in scores.graph.edges
    ])
    torch.testing.assert_close(scores.scores, expected, atol=1e-4, rtol=0)
    eap = edge_attribution(model, clean, corrupted, metric, method="eap")
    assert (scores.scores - eap.scores).abs().max() > 1e-3  # the interpolation changes the scores


# ---------------------------------------------------------------------- (2) exact edge patching
@pytest.mark.parametrize("metric_name", list(METRICS))
def test_edge_patching_equals_a_hook_loop(model, pair, metric_name):
    clean, corrupted = pair
    metric = METRICS[metric_name](clean)
    graph = CircuitGraph.of_model(model)
    edges = graph.edges[::3] + ["MLP1->logits"]  # 38 of the 110: head q / k / v, MLP and logit inputs
    result = edge_patching(model, clean, corrupted, metric, edges, progress=False)
    clean_out, corrupted_out = node_outputs_by_hand(model, clean), node_outputs_by_hand(model, corrupted)
    expected = []
    with torch.no_grad():
        for e in edges:
            up, down = e.split("->")
            expected.append(float(metric(hooked_logits(model, clean, {down: corrupted_out[up] - clean_out[up]}))))
    torch.testing.assert_close(result.values, torch.tensor(expected), atol=1e-4, rtol=0)
    assert set(result.to_frame().input) == {"q", "k", "v", "mlp", "logits"}
    assert set(result.to_frame().downstream_layer) == {0, 1, 2}
    assert result.effect.abs().max() > 1e-2
    assert result.clean_value == pytest.approx(float(metric(model(clean)).detach()), abs=1e-5)


def test_edge_patching_takes_a_subset_in_any_order(model, pair):
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    full = edge_patching(model, clean, corrupted, metric, progress=False)
    picked = ["MLP1->logits", "input->L0H2.k", "L0H1->L1H3.v"]
    some = edge_patching(model, clean, corrupted, metric, picked, progress=False)
    index = [full.graph.edges.index(e) for e in picked]
    torch.testing.assert_close(some.values, full.values[index])
    assert some.to_frame().edge.tolist() == picked


# ---------------------------------------------------------------------- (3) faithfulness
def test_full_graph_is_one_and_empty_circuit_is_zero(model, pair):
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    graph = CircuitGraph.of_model(model)
    full = circuit_faithfulness(model, clean, corrupted, metric, graph.edges)
    empty = circuit_faithfulness(model, clean, corrupted, metric, [])
    assert float(full.faithfulness[0]) == pytest.approx(1, abs=1e-4)
    assert float(empty.faithfulness[0]) == pytest.approx(0, abs=1e-4)
    assert full.clean_value == pytest.approx(float(metric(model(clean)).detach()), abs=1e-5)
    assert empty.values[0] == pytest.approx(float(metric(model(corrupted)).detach()), abs=1e-4)


def test_faithfulness_of_one_circuit_equals_hooks_reading_corrupted_outputs(model, pair):
    # a circuit of all edges but those into the logits from two nodes: the logits read those two
    # nodes' corrupted outputs, everything else runs clean (nothing upstream of the logits changed)
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    graph = CircuitGraph.of_model(model)
    dropped = ["L1H2->logits", "MLP0->logits"]
    result = circuit_faithfulness(model, clean, corrupted, metric, [e for e in graph.edges if e not in dropped])
    clean_out, corrupted_out = node_outputs_by_hand(model, clean), node_outputs_by_hand(model, corrupted)
    change = sum(corrupted_out[e.split("->")[0]] - clean_out[e.split("->")[0]] for e in dropped)
    with torch.no_grad():
        expected = float(metric(hooked_logits(model, clean, {"logits": change})))
    assert float(result.values[0]) == pytest.approx(expected, abs=1e-4)


def circuit_logits_by_hand(model, clean, corrupted_out, kept):
    """Logits of a circuit's run, every input materialised: input d reads the sum over the nodes u
    before it of u's output in this run if "u->d" is in `kept`, else u's output in the corrupted run
    (`corrupted_out`, by node label), plus the b_O of the blocks before it; each through its own
    LayerNorm; attention written out."""
    H, d_head, n_pos = model.cfg.n_head, model.cfg.d_head, clean.shape[1]
    future = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool), 1)

    def ln(norm, x):
        return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)

    with torch.no_grad():
        out, bias = {"input": model.embed(clean) + model.pos_embed(clean)}, 0

        def resid(d):
            return bias + sum(out[u] if f"{u}->{d}" in kept else corrupted_out[u] for u in out)

        for l, block in enumerate(model.blocks):
            a, heads = block.attn, {}
            for h in range(H):
                q, k, v = (ln(block.ln1, resid(f"L{l}H{h}.{x}")) @ W[h] + b[h]
                           for x, W, b in zip("qkv", (a.W_Q, a.W_K, a.W_V), (a.b_Q, a.b_K, a.b_V)))
                scores = (q @ k.transpose(-1, -2) / d_head**0.5).masked_fill(future, float("-inf"))
                heads[f"L{l}H{h}"] = scores.softmax(-1) @ v @ a.W_O[h]
            out.update(heads)
            bias = bias + a.b_O
            out[f"MLP{l}"] = block.mlp(ln(block.ln2, resid(f"MLP{l}")))
        return model.logits_from_resid(resid("logits"))


def some_circuits(graph):
    """Circuits of every kind: empty, full, random at densities 2% to 98%, all but one edge, all
    edges into the first block kept (nodes at their clean output) with a random rest, a top-k."""
    g = torch.Generator().manual_seed(1)
    n = len(graph)
    masks = [torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
    masks += [torch.rand(n, generator=g) < p for p in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98)]
    for e in ("MLP0->logits", "input->L1H2.k", "L0H1->MLP0"):
        masks.append(~graph.edge_mask([e]))
    first_block = torch.tensor([graph.layer_of_downstream(d) == 0 for d in graph.edge_downstream.tolist()])
    masks += [first_block, first_block | (torch.rand(n, generator=g) < 0.6)]
    masks.append(graph.edge_mask(torch.randperm(n, generator=g)[: n // 3]))
    return torch.stack(masks)


@pytest.mark.parametrize("n_layer, metric_name", [(2, "logit_diff"), (3, "next_token_logprob"), (2, "early_reads")])
def test_circuit_runs_equal_every_input_materialised(pair, n_layer, metric_name):
    # the circuit run computes only what differs from the clean and the corrupted run (and only the
    # positions from the first that differs, or the first read, to the last read); here every input
    # of every circuit is computed in full. "early_reads" reads position 1, before the first that differs.
    torch.manual_seed(n_layer)
    model = workbench.GPT(workbench.GPTConfig(n_layer=n_layer, n_head=4, n_embd=64, block_size=64)).eval()
    model.init_weights(std=0.15)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    clean, corrupted = pair
    metric = NextTokenLogProb(clean, positions=(1, 7)) if metric_name == "early_reads" else METRICS[metric_name](clean)
    graph = CircuitGraph.of_model(model)
    circuits = some_circuits(graph)
    result = evaluate_circuits(model, clean, corrupted, metric, circuits)
    corrupted_out = node_outputs_by_hand(model, corrupted)
    expected = torch.tensor([float(metric(circuit_logits_by_hand(model, clean, corrupted_out,
                                                                 {graph.edges[e] for e in mask.nonzero().flatten().tolist()})))
                             for mask in circuits])
    torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)
    assert (expected - expected[0]).abs().max() > 0.05  # the circuits differ
    assert result.values[0] == pytest.approx(float(metric(model(corrupted)).detach()), abs=1e-4)
    assert result.values[1] == pytest.approx(float(metric(model(clean)).detach()), abs=1e-4)


def test_circuit_status_marks_what_equals_the_clean_or_corrupted_run(model):
    from workbench.methods.circuit.forward import CLEAN, CORRUPTED, MIXED, circuit_status

    graph = CircuitGraph.of_model(model)
    circuits = [[], graph.edges, ["input->L0H1.v"], ["input->L0H1.v", "L0H1->logits"]]
    kept = torch.zeros(len(circuits), len(graph.upstream), len(graph.downstream), dtype=torch.bool)
    for c, edges in enumerate(circuits):
        index = graph.edge_index(edges)
        kept[c, graph.edge_upstream[index], graph.edge_downstream[index]] = True
    nodes, inputs = circuit_status(graph, kept)
    node, inp = graph.upstream.index, graph.downstream.index
    assert (nodes[0, 1:] == CORRUPTED).all() and (inputs[0] == CORRUPTED).all()  # the corrupted run
    assert (nodes[1] == CLEAN).all() and (inputs[1] == CLEAN).all()  # the clean run
    for c in (2, 3):
        # L0H1.v reads only the input, kept: the clean run's; q and k the corrupted run's: the head is mixed
        assert inputs[c, inp("L0H1.v")] == CLEAN and inputs[c, inp("L0H1.q")] == CORRUPTED
        assert nodes[c, node("L0H1")] == MIXED
        assert int((nodes[c] == MIXED).sum()) == 1 and int((nodes[c] == CLEAN).sum()) == 1
    assert inputs[2, inp("logits")] == CORRUPTED and inputs[3, inp("logits")] == MIXED


def planted_model():
    """2 layers, 4 heads: the answer X (over Y) is read from the token at position 1 through exactly one
    path, input -> L0H1.v -> L0H1 -> L1H2.v -> L1H2 -> logits. Every other weight is 0 except the
    embeddings, and two large constant position dimensions keep every LayerNorm's scale nearly fixed."""
    cfg = workbench.GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=16)
    model = workbench.GPT(cfg).eval()
    A, B, X, Y = 10, 11, 20, 21
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for module in model.modules():
            if isinstance(module, workbench.models.layernorm.LayerNorm):
                module.weight.fill_(1)
        model.embed.W_E[A, 0] = model.embed.W_E[B, 1] = 1.0  # the token the answer depends on
        model.embed.W_E[X, 5] = model.embed.W_E[Y, 6] = 1.0  # the answer directions (tied unembedding)
        model.pos_embed.W_pos[:, 62], model.pos_embed.W_pos[:, 63] = 10.0, -10.0
        d = cfg.d_model
        c_attn0, c_proj0 = model.blocks[0].attn.c_attn.weight, model.blocks[0].attn.c_proj.weight
        # L0H1: v = x0 - x1 (A: +, B: -), written to residual dim 2
        h, dh = 1, cfg.d_head
        c_attn0[2 * d + h * dh, 0], c_attn0[2 * d + h * dh, 1] = 20.0, -20.0
        c_proj0[2, h * dh] = 1.0
        # L1H2: v = x2, written to X (+) and Y (-)
        c_attn1, c_proj1 = model.blocks[1].attn.c_attn.weight, model.blocks[1].attn.c_proj.weight
        h = 2
        c_attn1[2 * d + h * dh, 2] = 20.0
        c_proj1[5, h * dh], c_proj1[6, h * dh] = 5.0, -5.0
    return model, (A, B, X, Y)


PLANTED = ["input->L0H1.v", "L0H1->L1H2.v", "L1H2->logits"]


def test_planted_path_is_needed_and_found_first():
    model, (A, B, X, Y) = planted_model()
    filler = 12
    clean = torch.tensor([[50256, A, filler, filler, filler, filler]])
    corrupted = torch.tensor([[50256, B, filler, filler, filler, filler]])
    metric = LogitDiff(X, Y)
    clean_value, corrupted_value = float(metric(model(clean)).detach()), float(metric(model(corrupted)).detach())
    assert clean_value - corrupted_value > 1  # the model shows the behaviour
    planted = circuit_faithfulness(model, clean, corrupted, metric, PLANTED)
    assert float(planted.faithfulness[0]) > 0.95
    for edge in PLANTED:
        without = circuit_faithfulness(model, clean, corrupted, metric, [e for e in planted.graph.edges if e != edge])
        assert float(without.faithfulness[0]) < 0.05, edge
    for method in ("eap", "eap-ig"):
        scores = edge_attribution(model, clean, corrupted, metric, method=method)
        assert set(scores.top(3)) == set(PLANTED), method
    curve = faithfulness_curve(model, clean, corrupted, metric, scores, sizes=[0, 1, 2, 3, len(scores.graph)],
                               exact_top=10)
    assert curve.faithfulness[3] > 0.95 and curve.faithfulness[:3].abs().max() < 0.05
    assert curve.smallest(0.9) == 3
    assert set(curve.ranking[:3].tolist()) == set(scores.graph.edge_index(PLANTED).tolist())


def test_faithfulness_curve_on_a_log_grid(model, pair):
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    scores = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=2)
    curve = faithfulness_curve(model, clean, corrupted, metric, scores, points=6)
    sizes = curve.n_edges.tolist()
    assert sizes[0] == 1 and sizes[-1] == 110 and sizes == sorted(set(sizes))
    assert float(curve.faithfulness[-1]) == pytest.approx(1, abs=1e-4)
    # each point is that top-k circuit's own faithfulness
    k = sizes[2]
    one = circuit_faithfulness(model, clean, corrupted, metric, scores.top(k))
    assert float(curve.values[2]) == pytest.approx(float(one.values[0]), abs=1e-5)
    df = curve.to_frame()
    assert list(df.columns) == ["n_edges", "value", "faithfulness", "metric"]


# ---------------------------------------------------------------------- (4) bad input
def test_bad_input(model, pair):
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    graph = CircuitGraph.of_model(model)
    with pytest.raises(InputError, match="'L9H0' is not a node"):
        graph.edge_index(["L9H0->logits"])
    with pytest.raises(InputError, match="not a node input"):
        edge_patching(model, clean, corrupted, metric, ["input->L0H0.x"])
    with pytest.raises(InputError, match="does not read"):  # exists as names, not as an edge (a later block)
        circuit_faithfulness(model, clean, corrupted, metric, ["L1H0->L0H2.q"])
    with pytest.raises(InputError, match="UPSTREAM->DOWNSTREAM"):
        circuit_faithfulness(model, clean, corrupted, metric, ["L0H0"])
    with pytest.raises(InputError, match="index"):
        circuit_faithfulness(model, clean, corrupted, metric, [len(graph)])
    with pytest.raises(InputError, match="edge mask"):
        circuit_faithfulness(model, clean, corrupted, metric, torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="steps must be a positive"):
        edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=0)
    with pytest.raises(InputError, match="method must be one of"):
        edge_attribution(model, clean, corrupted, metric, method="acdc")
    with pytest.raises(InputError, match="faithfulness is undefined"):
        circuit_faithfulness(model, clean, clean, metric, [])
    with pytest.raises(InputError, match="exact_top"):
        faithfulness_curve(model, clean, corrupted, metric, graph.edges, exact_top=1000)
    with pytest.raises(InputError, match="more than once"):
        faithfulness_curve(model, clean, corrupted, metric, ["MLP0->logits", "MLP0->logits"])


def test_eap_ig_in_chunks_of_steps_equals_one_batch(model, pair, monkeypatch):
    # prompt sets too big for one forward run the interpolation steps a few at a time
    from workbench.methods.circuit import attribution

    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    whole = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=3)
    monkeypatch.setattr(attribution, "TOKEN_BUDGET", 1)  # one step per forward
    chunked = edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=3)
    torch.testing.assert_close(chunked.per_prompt, whole.per_prompt, atol=1e-5, rtol=0)
    assert chunked.clean_value == pytest.approx(whole.clean_value, abs=1e-6)


# ---------------------------------------------------------------------- per-prompt values and intervals
def logit_diff_of(b):
    """Prompt b's own metric of METRICS["logit_diff"]."""
    return LogitDiff([11, 500, 7][b], [3, 3, 900][b])


def test_edge_patching_and_circuit_runs_per_prompt_equal_each_prompt_alone(model, pair):
    """per_prompt of exact edge patching and of the circuits' runs (a faithfulness curve): prompt b's
    values equal the method run on prompt b alone; their mean is the batched value (1e-5)."""
    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    graph = CircuitGraph.of_model(model)
    edges = graph.edges[::7]
    exact = edge_patching(model, clean, corrupted, metric, edges, per_prompt=True, progress=False)
    batched = edge_patching(model, clean, corrupted, metric, edges, progress=False)
    torch.testing.assert_close(exact.per_prompt.mean(-1), batched.values, atol=1e-5, rtol=0)
    scores = edge_attribution(model, clean, corrupted, metric)
    curve = faithfulness_curve(model, clean, corrupted, metric, scores, points=5, per_prompt=True)
    plain = faithfulness_curve(model, clean, corrupted, metric, scores, points=5)
    torch.testing.assert_close(curve.per_prompt.mean(-1), plain.values, atol=1e-5, rtol=0)
    assert curve.per_prompt.shape == (len(curve.values), 3)
    for b in range(3):
        one = (clean[b:b + 1], corrupted[b:b + 1], logit_diff_of(b))
        alone = edge_patching(model, *one, edges, progress=False)
        torch.testing.assert_close(exact.per_prompt[:, b], alone.values, atol=1e-4, rtol=0)
        assert float(exact.prompt_clean[b]) == pytest.approx(alone.clean_value, abs=1e-4)
        circuits = circuit_faithfulness(model, *one, graph.edges[:40])
        single = circuit_faithfulness(model, clean, corrupted, metric, graph.edges[:40], per_prompt=True)
        assert float(single.per_prompt[0, b]) == pytest.approx(float(circuits.values[0]), abs=1e-4)
        assert float(single.prompt_corrupted[b]) == pytest.approx(circuits.corrupted_value, abs=1e-4)
        runs = evaluate_circuits(model, *one, curve.circuits)
        torch.testing.assert_close(curve.per_prompt[:, b], runs.values, atol=1e-4, rtol=0)
    assert float(scores.prompt_clean[1]) == pytest.approx(float(logit_diff_of(1)(model(clean[1:2])).detach()), abs=1e-4)


def test_intervals_of_scores_exact_effects_and_faithfulness(model, pair):
    """to_frame intervals: EAP scores and exact effects (patching's columns, a hand bootstrap of the
    per-prompt values), faithfulness by a paired ratio bootstrap written out by hand; groups."""
    import numpy as np

    from workbench.methods.statistics import Bootstrap

    clean, corrupted = pair
    metric = METRICS["logit_diff"](clean)
    groups = ["p", "q", "p"]
    scores = edge_attribution(model, clean, corrupted, metric, groups=groups)
    scores.bootstrap = Bootstrap(n_resamples=300, seed=1)
    frame = scores.to_frame()
    assert (frame["n"] == 3).all()
    assert ((frame["ci_low"] <= frame["score"] + 1e-9) & (frame["score"] <= frame["ci_high"] + 1e-9)).all()
    draws = np.random.default_rng(1).integers(0, 3, size=(300, 3))

    def hand(x):
        means = np.asarray(x, dtype=np.float64)[draws].mean(1)
        return np.quantile(means, 0.025), np.quantile(means, 0.975)

    top = int(scores.ranking()[0])
    assert (frame.loc[top, "ci_low"], frame.loc[top, "ci_high"]) == pytest.approx(hand(scores.per_prompt[:, top]),
                                                                                   abs=1e-7)
    by_group = scores.to_frame(by_group=True)
    p = by_group[(by_group["group"] == "p") & (by_group["edge"] == scores.graph.edges[top])].iloc[0]
    assert p["score"] == pytest.approx(float(scores.per_prompt[[0, 2], top].mean()), abs=1e-6) and p["n"] == 2

    exact = edge_patching(model, clean, corrupted, metric, scores.ranking()[:6], per_prompt=True, groups=groups,
                          progress=False)
    exact.bootstrap = Bootstrap(n_resamples=300, seed=1)
    ef = exact.to_frame()
    assert {"n", "ci_low", "ci_high", "effect_ci_low", "effect_ci_high"} <= set(ef.columns)
    paired = exact.per_prompt[0] - exact.prompt_clean  # each prompt's effect: against its own clean run
    assert (ef.loc[0, "effect_ci_low"], ef.loc[0, "effect_ci_high"]) == pytest.approx(hand(paired), abs=1e-7)

    curve = faithfulness_curve(model, clean, corrupted, metric, scores, sizes=[3, 30], per_prompt=True, groups=groups)
    curve.bootstrap = Bootstrap(n_resamples=300, seed=1)
    cf = curve.to_frame()
    num = (curve.per_prompt[1] - curve.prompt_corrupted).double().numpy()
    den = (curve.prompt_clean - curve.prompt_corrupted).double().numpy()
    ratios = num[draws].mean(1) / den[draws].mean(1)
    assert cf.loc[1, "faithfulness"] == pytest.approx(num.mean() / den.mean(), abs=1e-5)
    assert (cf.loc[1, "faithfulness_ci_low"], cf.loc[1, "faithfulness_ci_high"]) == pytest.approx(
        (np.quantile(ratios, 0.025), np.quantile(ratios, 0.975)), abs=1e-6)
    assert (cf.loc[1, "ci_low"], cf.loc[1, "ci_high"]) == pytest.approx(hand(curve.per_prompt[1]), abs=1e-7)
    assert set(curve.to_frame(by_group=True)["group"]) == {"p", "q"}
    with pytest.raises(InputError, match="pass per_prompt=True"):
        edge_patching(model, clean, corrupted, metric, [0], groups=groups, progress=False)


def test_the_experiment_records_per_prompt_values_and_intervals(tmp_path):
    from conftest import random_hf_model

    from workbench.experiments import replay, run_experiment
    from workbench.experiments.circuit import CircuitConfig

    path = tmp_path / "m"
    random_hf_model().save_pretrained(path)
    small = workbench.load_model(path, device="cpu")
    config = CircuitConfig(prompt_set="induction", n_prompts=3, seq_len=4, steps=2, exact_top=6, points=4,
                           n_resamples=100, bootstrap_seed=5)
    run = run_experiment("circuit", config, model=small, root=tmp_path / "runs")
    edges, curve = run.results.tables["edges"], run.results.tables["curve"]
    assert (edges["n"] == 3).all() and edges["exact_ci_low"].notna().sum() == 6
    assert {"faithfulness_ci_low", "faithfulness_ci_high"} <= set(curve.columns)
    assert len(run.results.tables["curve_per_prompt"]) == 3 * len(curve)
    assert "percentile bootstrap of the mean over n = 3 prompts, 100 resamples, seed 5" in run.results.summary
    assert replay(run.path, model=small).ok
