"""ARENA chapter 1 (callummcdougall/ARENA_3.0, chapter1_transformer_interp), run on workbench with only the import
changed: the intro to mech interp (part 2: TransformerLens intro, induction heads, hooks, and the circuits
section "Reverse-engineering induction circuits": FactoredMatrix, OV and QK circuits, composition scores) and the
IOI exercises' model and task setup, direct logit attribution and first patching cells (part 3).

Sources the code was checked against, call for call (which methods, which arguments, in which order), from forks
of callummcdougall/ARENA_3.0 that store the solution files:
- part 2: connor-henderson/ARENA_3.0@1fcea5fa, chapter1_transformer_interp/exercises/part2_intro_to_mech_interp/solutions.py
- part 3: Matthew-Jennings/arena3@8d77790f, chapter1_transformer_interp/exercises/part3_indirect_object_identification/solutions.py
Each test names its section (ARENA's numbered headings) and cells in order.

The code is written out again here (not pasted: ARENA's text stays its own), keeping every call and argument;
what changes, and why, is said beside it. The model is a fixture: random GPT-2-shaped weights (2 layers, 4
heads, 64 positions; `t` is torch). Part 2 runs its cells on ARENA's own 2-layer attention-only model
(shortformer positions, `use_attn_result=True` in its config); here they run on the GPT-2-shaped model, with
`model.set_use_attn_result(True)` standing in for the config flag (TransformerLens's method; in workbench it
changes nothing, per-head results are always there). So checks that hold only for that architecture (the sum
of the QK-input decomposition is the attention input) are left out, and layer/head indices (ARENA's L1H4,
L0H7) and lengths fit the small model. Part 3 loads GPT-2 with `fold_ln` and centring; workbench does not
process weights, so both sides here are unprocessed, and ARENA's check that the LayerNorm-scaled final
stream gives the logit difference holds only with folding: it is checked by hand with the LayerNorm's
weight and bias. Plotting (`imshow`, `line`, circuitsvis, rich tables) is trimmed; ARENA's own
`tests.test_*` calls are not run. Each snippet runs once on TransformerLens 4.x (the `bridge` fixture) and once
on workbench with the same weights, comparing every number to 1e-4 (tl_port.run_both). The random model has no
induction or IOI circuit: numbers are compared, not interpreted."""

import contextlib
import functools
import io
from types import SimpleNamespace

import einops
import numpy as np
import torch as t
import torch.nn.functional as F

from tl_port import assert_same, run_both


# ============================================================================ part 2, 1: TransformerLens: Introduction
def test_intro_loss_tokens_and_patterns(bridge, model):
    """The loss cell, `to_str_tokens` / `to_tokens` of "gpt2" and `to_string` of a list of ids, the accuracy
    cell (`logits.argmax`, `to_str_tokens` of the correct predictions), `run_with_cache(remove_batch_dim=True)`,
    the pattern by short and full name, the pattern computed by hand from q and k, and the
    `["pattern", 0, "attn"]` cell (circuitsvis trimmed). The description text is ours, short enough for 64
    positions."""
    def snippet(gpt2_small, lib):
        device = gpt2_small.cfg.device
        model_description_text = """## Loading Models

A hooked transformer loads GPT-style models into one consistent architecture. Let's find the loss on this."""
        loss = gpt2_small(model_description_text, return_type="loss")
        out = {"loss": loss, "gpt2": (gpt2_small.to_str_tokens("gpt2"), gpt2_small.to_tokens("gpt2"),
                                      gpt2_small.to_string([50256, 70, 457, 17]))}

        logits = gpt2_small(model_description_text, return_type="logits")
        prediction = logits.argmax(dim=-1).squeeze()[:-1]
        true_tokens = gpt2_small.to_tokens(model_description_text).squeeze()[1:]
        is_correct = prediction == true_tokens
        out["accuracy"] = (is_correct.sum(), len(true_tokens), gpt2_small.to_str_tokens(prediction[is_correct]))

        gpt2_text = ("Natural language processing tasks, such as question answering, machine translation, reading "
                     "comprehension, and summarization, are typically approached with supervised learning on "
                     "taskspecific datasets.")
        gpt2_tokens = gpt2_small.to_tokens(gpt2_text)
        gpt2_logits, gpt2_cache = gpt2_small.run_with_cache(gpt2_tokens, remove_batch_dim=True)
        attn_patterns_layer_0 = gpt2_cache["pattern", 0]
        attn_patterns_layer_0_copy = gpt2_cache["blocks.0.attn.hook_pattern"]
        t.testing.assert_close(attn_patterns_layer_0, attn_patterns_layer_0_copy)

        layer0_pattern_from_cache = gpt2_cache["pattern", 0]
        q, k = gpt2_cache["q", 0], gpt2_cache["k", 0]
        seq, nhead, headsize = q.shape
        layer0_attn_scores = einops.einsum(q, k, "seqQ n h, seqK n h -> n seqQ seqK")
        mask = t.triu(t.ones((seq, seq), dtype=bool), diagonal=1).to(device)
        layer0_attn_scores.masked_fill_(mask, -1e9)
        layer0_pattern_from_q_and_k = (layer0_attn_scores / headsize**0.5).softmax(-1)
        t.testing.assert_close(layer0_pattern_from_cache, layer0_pattern_from_q_and_k)

        attention_pattern = gpt2_cache["pattern", 0, "attn"]
        gpt2_str_tokens = gpt2_small.to_str_tokens(gpt2_text)
        out.update(logits=gpt2_logits, pattern=attention_pattern, by_hand=layer0_pattern_from_q_and_k,
                   str_tokens=gpt2_str_tokens, head_names=[f"L0H{i}" for i in range(gpt2_small.cfg.n_heads)])
        return out

    run_both(snippet, bridge, model)


# ============================================================================ part 2, 2: Finding induction heads
def get_log_probs(logits, tokens):
    """part 1's solution, imported by part 2: the log-probability of each next token."""
    log_probs = logits.log_softmax(dim=-1)
    return log_probs[:, :-1].gather(dim=-1, index=tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def generate_repeated_tokens(model, seq_len, batch=1):
    """ARENA's function; its random draw is seeded here (t.manual_seed(0)) so both libraries get the same."""
    t.manual_seed(0)
    prefix = (t.ones(batch, 1) * model.tokenizer.bos_token_id).long()
    rep_tokens_half = t.randint(0, model.cfg.d_vocab, (batch, seq_len), dtype=t.int64)
    return t.cat([prefix, rep_tokens_half, rep_tokens_half], dim=-1).to(model.cfg.device)


def run_and_cache_model_repeated_tokens(model, seq_len, batch=1):
    rep_tokens = generate_repeated_tokens(model, seq_len, batch)
    rep_logits, rep_cache = model.run_with_cache(rep_tokens)
    return rep_tokens, rep_logits, rep_cache


def detector(model, cache, score_of):
    """The shape of ARENA's three detectors: heads whose score on the (batchless) pattern is above 0.4."""
    attn_heads = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            attention_pattern = cache["pattern", layer][head]
            if score_of(attention_pattern) > 0.4:
                attn_heads.append(f"{layer}.{head}")
    return attn_heads


def test_attention_detectors_and_repeated_tokens(bridge, model):
    """The text run (`run_with_cache(text, remove_batch_dim=True)`), `current_attn_detector`,
    `prev_attn_detector`, `first_attn_detector` (diagonal, sub-diagonal, first column), the repeated-tokens
    run (`remove_batch_dim()` as a statement, `to_str_tokens` of the tokens, `reset_hooks()`, log-probs of
    each half) and `induction_attn_detector`. ARENA repeats 50 tokens; this model has 64 positions, so 25."""
    def snippet(model, lib):
        text = ("We think that powerful, significantly superhuman machine intelligence is more likely than not to be "
                "created this century.")
        logits, cache = model.run_with_cache(text, remove_batch_dim=True)
        str_tokens = model.to_str_tokens(text)
        patterns = [cache["pattern", layer] for layer in range(model.cfg.n_layers)]
        detected = [detector(model, cache, lambda p: p.diagonal().mean()),
                    detector(model, cache, lambda p: p.diagonal(-1).mean()),
                    detector(model, cache, lambda p: p[:, 0].mean())]

        seq_len = 25
        batch = 1
        (rep_tokens, rep_logits, rep_cache) = run_and_cache_model_repeated_tokens(model, seq_len, batch)
        rep_cache.remove_batch_dim()
        rep_str = model.to_str_tokens(rep_tokens)
        model.reset_hooks()
        log_probs = get_log_probs(rep_logits, rep_tokens).squeeze()
        halves = (log_probs[:seq_len].mean(), log_probs[seq_len:].mean())

        def induction_score(attention_pattern):
            seq_len = (attention_pattern.shape[-1] - 1) // 2
            return attention_pattern.diagonal(-seq_len + 1).mean()

        return {"logits": logits, "str_tokens": str_tokens, "patterns": patterns, "detected": detected,
                "rep_str": rep_str, "log_probs": log_probs, "halves": halves,
                "induction": detector(model, rep_cache, induction_score),
                "rep_patterns": [rep_cache["pattern", layer] for layer in range(model.cfg.n_layers)]}

    run_both(snippet, bridge, model)


# ============================================================================ part 2, 3: TransformerLens: Hooks
def test_induction_scores_with_hooks(bridge, model):
    """`induction_score_hook` on every pattern (names filter, `return_type=None`) over a batch of 10, and
    `visualize_pattern_hook` (`hook.layer()` and the batch-mean pattern; circuitsvis trimmed) on
    `get_act_name("pattern", layer)` for each layer (ARENA: layers 5-7 of GPT-2 small)."""
    def snippet(model, lib):
        utils = lib.utils
        seq_len = 25
        batch = 10
        rep_tokens_10 = generate_repeated_tokens(model, seq_len, batch)
        induction_score_store = t.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

        def induction_score_hook(pattern, hook):
            induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
            induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
            induction_score_store[hook.layer(), :] = induction_score

        pattern_hook_names_filter = lambda name: name.endswith("pattern")
        model.run_with_hooks(rep_tokens_10, return_type=None,
                             fwd_hooks=[(pattern_hook_names_filter, induction_score_hook)])

        shown = []

        def visualize_pattern_hook(pattern, hook):
            shown.append((hook.layer(), model.to_str_tokens(rep_tokens_10[0]), pattern.mean(0)))

        for induction_head_layer in range(model.cfg.n_layers):
            model.run_with_hooks(rep_tokens_10, return_type=None,
                                 fwd_hooks=[(utils.get_act_name("pattern", induction_head_layer), visualize_pattern_hook)])
        return {"scores": induction_score_store, "shown": shown}

    ours, _ = run_both(snippet, bridge, model)
    assert ours["scores"].abs().sum() > 0


def test_logit_attribution_and_ablation_scores(bridge, model):
    """`logit_attribution` from `cache["embed"]`, `cache["result", 0]`, `cache["result", 1]` and `model.W_U`
    (ARENA's check against the correct-token logits holds for its attention-only model without LayerNorm, so
    both sides are returned instead), on the text and on each half of the repeated tokens; then
    `head_ablation_hook` on `get_act_name("v", layer)`, `cross_entropy_loss` and `get_ablation_scores`."""
    def snippet(model, lib):
        utils = lib.utils
        model.set_use_attn_result(True)  # ARENA's model config sets use_attn_result=True

        def logit_attribution(embed, l1_results, l2_results, W_U, tokens):
            W_U_correct_tokens = W_U[:, tokens[1:]]
            direct_attributions = einops.einsum(W_U_correct_tokens, embed[:-1], "emb seq, seq emb -> seq")
            l1_attributions = einops.einsum(W_U_correct_tokens, l1_results[:-1], "emb seq, seq nhead emb -> seq nhead")
            l2_attributions = einops.einsum(W_U_correct_tokens, l2_results[:-1], "emb seq, seq nhead emb -> seq nhead")
            return t.concat([direct_attributions.unsqueeze(-1), l1_attributions, l2_attributions], dim=-1)

        text = ("We think that powerful, significantly superhuman machine intelligence is more likely than not to be "
                "created this century.")
        logits, cache = model.run_with_cache(text, remove_batch_dim=True)
        tokens = model.to_tokens(text)
        with t.inference_mode():
            embed = cache["embed"]
            l1_results = cache["result", 0]
            l2_results = cache["result", 1]
            logit_attr = logit_attribution(embed, l1_results, l2_results, model.W_U, tokens[0])
            correct_token_logits = logits[0, t.arange(len(tokens[0]) - 1), tokens[0, 1:]]

        seq_len = 25
        rep_tokens, rep_logits, rep_cache = run_and_cache_model_repeated_tokens(model, seq_len)
        rep_cache.remove_batch_dim()
        embed = rep_cache["embed"]
        l1_results = rep_cache["result", 0]
        l2_results = rep_cache["result", 1]
        first_half_tokens = rep_tokens[0, : 1 + seq_len]
        second_half_tokens = rep_tokens[0, seq_len:]
        first_half_logit_attr = logit_attribution(embed[: seq_len + 1], l1_results[: seq_len + 1],
                                                  l2_results[: seq_len + 1], model.W_U, first_half_tokens)
        second_half_logit_attr = logit_attribution(embed[seq_len:], l1_results[seq_len:], l2_results[seq_len:],
                                                   model.W_U, second_half_tokens)
        assert first_half_logit_attr.shape == (seq_len, 2 * model.cfg.n_heads + 1)

        def head_ablation_hook(v, hook, head_index_to_ablate):
            v[:, :, head_index_to_ablate, :] = 0.0
            return v

        def cross_entropy_loss(logits, tokens):
            log_probs = F.log_softmax(logits, dim=-1)
            pred_log_probs = t.gather(log_probs[:, :-1], -1, tokens[:, 1:, None])[..., 0]
            return -pred_log_probs.mean()

        def get_ablation_scores(model, tokens):
            ablation_scores = t.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)
            model.reset_hooks()
            logits = model(tokens, return_type="logits")
            loss_no_ablation = cross_entropy_loss(logits, tokens)
            for layer in range(model.cfg.n_layers):  # ARENA wraps this range in tqdm
                for head in range(model.cfg.n_heads):
                    temp_hook_fn = functools.partial(head_ablation_hook, head_index_to_ablate=head)
                    ablated_logits = model.run_with_hooks(tokens, fwd_hooks=[(utils.get_act_name("v", layer), temp_hook_fn)])
                    loss = cross_entropy_loss(ablated_logits, tokens)
                    ablation_scores[layer, head] = loss - loss_no_ablation
            return ablation_scores

        return {"logit_attr": logit_attr, "correct_token_logits": correct_token_logits,
                "halves": (first_half_logit_attr, second_half_logit_attr),
                "ablation_scores": get_ablation_scores(model, rep_tokens)}

    ours, _ = run_both(snippet, bridge, model)
    assert ours["ablation_scores"].abs().sum() > 0


# ============================================================================ part 2, 4: Reverse-engineering induction circuits
def test_factored_matrix_cells(bridge, model):
    """The FactoredMatrix cells: a 5x5 rank-2 product (random, seeded here), norms and dimensions,
    eigenvalues and singular values against torch's, the full `svd()`, a product with a 5x300 matrix, `AB`."""
    def snippet(model, lib):
        FactoredMatrix = lib.FactoredMatrix
        t.manual_seed(0)
        A = t.randn(5, 2)
        B = t.randn(2, 5)
        AB = A @ B
        AB_factor = FactoredMatrix(A, B)
        out = {"norms": (AB.norm(), AB_factor.norm()), "dims": (AB_factor.rdim, AB_factor.ldim, AB_factor.mdim),
               "eig": (t.linalg.eig(AB).eigenvalues, AB_factor.eigenvalues), "S": (t.linalg.svd(AB).S, AB_factor.S)}
        U, S, V = AB_factor.svd()
        out["svd"] = U @ t.diag(S) @ V.T  # U and V are unique up to signs: their product is compared
        C = t.randn(5, 300)
        ABC = AB @ C
        ABC_factor = AB_factor @ C
        out["ABC"] = (tuple(ABC.shape), ABC.norm(), tuple(ABC_factor.shape), ABC_factor.norm(),
                      ABC_factor.rdim, ABC_factor.ldim, ABC_factor.mdim)
        AB_unfactored = AB_factor.AB
        t.testing.assert_close(AB_unfactored, AB)
        return out

    run_both(snippet, bridge, model)


def top_1_acc(full_OV_circuit, device):
    """ARENA's `top_1_acc`: the fraction of rows whose largest entry is on the diagonal (of `.AB`)."""
    AB = full_OV_circuit.AB
    return (t.argmax(AB, dim=1) == t.arange(AB.shape[0]).to(device)).float().mean().item()


def test_ov_and_qk_circuits(bridge, model):
    """The full OV circuit `W_E @ FactoredMatrix(W_V, W_O) @ W_U` of one layer-1 head (ARENA: L1H4; here
    L1H3), a random 200x200 sample (`[indices, indices].AB`), `top_1_acc` (ARENA leaves the call on all
    50257 tokens, a 10 GB product, commented out; here on the first 3000 tokens), `mask_scores` and the
    positional QK pattern `W_pos @ W_Q W_K^T @ W_pos.T` of one layer-0 head (ARENA: L0H7; here L0H2) with its
    mean lower diagonal, and `find_K_comp_full_circuit` (ARENA's heads 7 and 4; here 2 and 3)."""
    def snippet(model, lib):
        FactoredMatrix = lib.FactoredMatrix
        device = model.cfg.device
        head_index = 3
        layer = 1
        W_O = model.W_O[layer, head_index]
        W_V = model.W_V[layer, head_index]
        W_E = model.W_E
        W_U = model.W_U
        OV_circuit = FactoredMatrix(W_V, W_O)
        full_OV_circuit = W_E @ OV_circuit @ W_U

        t.manual_seed(0)  # ARENA's draw, seeded so both libraries sample the same rows
        indices = t.randint(0, model.cfg.d_vocab, (200,))
        full_OV_circuit_sample = full_OV_circuit[indices, indices].AB
        accuracy = top_1_acc(full_OV_circuit[:3000, :3000], device)

        def mask_scores(attn_scores):
            mask = t.tril(t.ones_like(attn_scores)).bool()
            neg_inf = t.tensor(-1.0e6).to(attn_scores.device)
            return t.where(mask, attn_scores, neg_inf)

        layer = 0
        head_index = 2
        W_pos = model.W_pos
        W_QK = model.W_Q[layer, head_index] @ model.W_K[layer, head_index].T
        pos_by_pos_scores = W_pos @ W_QK @ W_pos.T
        masked_scaled = mask_scores(pos_by_pos_scores / model.cfg.d_head**0.5)
        pos_by_pos_pattern = t.softmax(masked_scaled, dim=-1)
        lower_diagonal = pos_by_pos_pattern.diag(-1).mean()

        def find_K_comp_full_circuit(model, prev_token_head_index, ind_head_index):
            W_E = model.W_E
            W_Q = model.W_Q[1, ind_head_index]
            W_K = model.W_K[1, ind_head_index]
            W_O = model.W_O[0, prev_token_head_index]
            W_V = model.W_V[0, prev_token_head_index]
            Q = W_E @ W_Q
            K = W_E @ W_V @ W_O @ W_K
            return FactoredMatrix(Q, K.T)

        K_comp_circuit = find_K_comp_full_circuit(model, 2, 3)
        return {"full_shape": tuple(full_OV_circuit.shape), "sample": full_OV_circuit_sample, "top_1": accuracy,
                "pattern": pos_by_pos_pattern, "lower_diagonal": lower_diagonal,
                "K_comp_shape": tuple(K_comp_circuit.shape), "K_comp_corner": K_comp_circuit[:300, :300].AB,
                "K_comp_top_1": top_1_acc(K_comp_circuit.T[:3000, :3000], device)}

    run_both(snippet, bridge, model)


def test_decomposed_qk_input_and_attention_scores(bridge, model):
    """`decompose_qk_input` (embed, pos_embed and each layer-0 head's result of the batchless repeated-tokens
    cache), `decompose_q` / `decompose_k` for a layer-1 head (ARENA: head 4; here 3), `decompose_attn_scores`
    the (embed, L0H2) score map (ARENA: L0H7, component 9) and the standard deviations by component
    (`einops.reduce(..., t.std)`). ARENA's checks that the components
    sum to the attention input hold for its attention-only model only (with MLPs, layer 1's input has more
    terms), so they are not run; ARENA's functions read the global `model`, passed in here."""
    def snippet(model, lib):
        model.set_use_attn_result(True)  # ARENA's model config sets use_attn_result=True
        seq_len = 25
        rep_tokens, rep_logits, rep_cache = run_and_cache_model_repeated_tokens(model, seq_len)
        rep_cache.remove_batch_dim()

        def decompose_qk_input(cache):
            y0 = cache["embed"].unsqueeze(0)
            y1 = cache["pos_embed"].unsqueeze(0)
            y_rest = cache["result", 0].transpose(0, 1)
            return t.concat([y0, y1, y_rest], dim=0)

        def decompose_q(decomposed_qk_input, ind_head_index):
            W_Q = model.W_Q[1, ind_head_index]
            return einops.einsum(decomposed_qk_input, W_Q, "n seq d_model, d_model d_head -> n seq d_head")

        def decompose_k(decomposed_qk_input, ind_head_index):
            W_K = model.W_K[1, ind_head_index]
            return einops.einsum(decomposed_qk_input, W_K, "n seq d_model, d_model d_head -> n seq d_head")

        def decompose_attn_scores(decomposed_q, decomposed_k):
            return einops.einsum(decomposed_q, decomposed_k,
                                 "q_comp q_pos d_model, k_comp k_pos d_model -> q_comp k_comp q_pos k_pos")

        ind_head_index = 3
        decomposed_qk_input = decompose_qk_input(rep_cache)
        decomposed_q = decompose_q(decomposed_qk_input, ind_head_index)
        decomposed_k = decompose_k(decomposed_qk_input, ind_head_index)
        component_labels = ["Embed", "PosEmbed"] + [f"0.{h}" for h in range(model.cfg.n_heads)]
        norms = [decomposed_input.pow(2).sum([-1]) for decomposed_input in (decomposed_q, decomposed_k)]
        decomposed_scores = decompose_attn_scores(decomposed_q, decomposed_k)
        decomposed_stds = einops.reduce(decomposed_scores,
                                        "query_decomp key_decomp query_pos key_pos -> query_decomp key_decomp", t.std)
        return {"input": decomposed_qk_input, "q": decomposed_q, "k": decomposed_k, "labels": component_labels,
                "norms": norms, "scores_embed_head": t.tril(decomposed_scores[0, 2 + 2]), "stds": decomposed_stds}

    run_both(snippet, bridge, model)


def test_composition_scores(bridge, model):
    """`get_comp_score`, the Q / K / V composition scores of every layer-0 head into every layer-1 head from
    `W_Q @ W_K.transpose(-1, -2)` and `W_V @ W_O`, and `get_batched_comp_scores`, which rebuilds
    FactoredMatrices from `W_As.A.reshape(...)` / `.B` and multiplies them with broadcasting; ARENA asserts
    the two agree."""
    def snippet(model, lib):
        FactoredMatrix = lib.FactoredMatrix

        def get_comp_score(W_A, W_B):
            W_A_norm = W_A.pow(2).sum().sqrt()
            W_B_norm = W_B.pow(2).sum().sqrt()
            W_AB_norm = (W_A @ W_B).pow(2).sum().sqrt()
            return (W_AB_norm / (W_A_norm * W_B_norm)).item()

        W_QK = model.W_Q @ model.W_K.transpose(-1, -2)
        W_OV = model.W_V @ model.W_O
        composition_scores = {kind: t.zeros(model.cfg.n_heads, model.cfg.n_heads).to(model.cfg.device) for kind in "QKV"}
        for i in range(model.cfg.n_heads):  # ARENA wraps this range in tqdm
            for j in range(model.cfg.n_heads):
                composition_scores["Q"][i, j] = get_comp_score(W_OV[0, i], W_QK[1, j])
                composition_scores["K"][i, j] = get_comp_score(W_OV[0, i], W_QK[1, j].T)
                composition_scores["V"][i, j] = get_comp_score(W_OV[0, i], W_OV[1, j])

        def get_batched_comp_scores(W_As, W_Bs):
            W_As = FactoredMatrix(W_As.A.reshape(-1, 1, *W_As.A.shape[-2:]), W_As.B.reshape(-1, 1, *W_As.B.shape[-2:]))
            W_Bs = FactoredMatrix(W_Bs.A.reshape(1, -1, *W_Bs.A.shape[-2:]), W_Bs.B.reshape(1, -1, *W_Bs.B.shape[-2:]))
            W_ABs = W_As @ W_Bs
            return W_ABs.norm() / (W_As.norm() * W_Bs.norm())

        W_QK = FactoredMatrix(model.W_Q, model.W_K.transpose(-1, -2))
        W_OV = FactoredMatrix(model.W_V, model.W_O)
        batched = {"Q": get_batched_comp_scores(W_OV[0], W_QK[1]), "K": get_batched_comp_scores(W_OV[0], W_QK[1].T),
                   "V": get_batched_comp_scores(W_OV[0], W_OV[1])}
        for kind in "QKV":
            t.testing.assert_close(batched[kind], composition_scores[kind])
        return {"scores": composition_scores, "batched": batched}

    run_both(snippet, bridge, model)


def test_ablation_induction_score_through_hook_ctx(bridge, model):
    """`ablation_induction_score`: zero a layer-0 head's values and store the induction score of a layer-1
    head in `hook.ctx` from a pattern hook, then read it back from `model.blocks[1].attn.hook_pattern.ctx`
    after `run_with_hooks` (which keeps contexts); the baseline with no ablation, then each head (ARENA's
    induction head 4; here 3)."""
    def snippet(model, lib):
        utils = lib.utils
        seq_len = 25
        rep_tokens = generate_repeated_tokens(model, seq_len)

        def ablation_induction_score(prev_head_index, ind_head_index):
            def ablation_hook(v, hook):
                if prev_head_index is not None:
                    v[:, :, prev_head_index] = 0.0
                return v

            def induction_pattern_hook(attn, hook):
                hook.ctx[prev_head_index] = attn[0, ind_head_index].diag(-(seq_len - 1)).mean()

            model.run_with_hooks(rep_tokens, fwd_hooks=[(utils.get_act_name("v", 0), ablation_hook),
                                                        (utils.get_act_name("pattern", 1), induction_pattern_hook)])
            return model.blocks[1].attn.hook_pattern.ctx[prev_head_index].item()

        baseline_induction_score = ablation_induction_score(None, 3)
        changes = [ablation_induction_score(i, 3) - baseline_induction_score for i in range(model.cfg.n_heads)]
        model.reset_hooks()  # ARENA's notebook leaves the contexts; cleared so later tests start clean
        return {"baseline": baseline_induction_score, "changes": changes}

    run_both(snippet, bridge, model)


# ============================================================================ part 3: IOI, model & task setup
def setup_ioi(model):
    """Section 1 "Model & Task Setup": the prompts from `prompt_format` and `name_pairs` (adjacent prompts with
    the answers swapped), `answers = [names[::i] ...]`, `answer_tokens` from `to_tokens(names,
    prepend_bos=False).T`, `run_with_cache`, and `logits_to_ave_logit_diff` (per prompt and averaged). Then the
    first cell of section 2: `tokens_to_residual_directions` and the logit-difference directions (`unbind`)."""
    prompt_format = [
        "When John and Mary went to the shops,{} gave the bag to",
        "When Tom and James went to the park,{} gave the ball to",
        "When Dan and Sid went to the shops,{} gave an apple to",
        "After Martin and Amy went to the park,{} gave a drink to",
    ]
    name_pairs = [(" John", " Mary"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")]
    prompts = [prompt.format(name) for (prompt, names) in zip(prompt_format, name_pairs) for name in names[::-1]]
    answers = [names[::i] for names in name_pairs for i in (1, -1)]
    answer_tokens = t.concat([model.to_tokens(names, prepend_bos=False).T for names in answers])

    tokens = model.to_tokens(prompts, prepend_bos=True)
    tokens = tokens.to(model.cfg.device)  # ARENA: .to(device), its module-level device
    original_logits, cache = model.run_with_cache(tokens)

    def logits_to_ave_logit_diff(logits, answer_tokens=answer_tokens, per_prompt=False):
        final_logits = logits[:, -1, :]
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        correct_logits, incorrect_logits = answer_logits.unbind(dim=-1)
        answer_logit_diff = correct_logits - incorrect_logits
        return answer_logit_diff if per_prompt else answer_logit_diff.mean()

    original_per_prompt_diff = logits_to_ave_logit_diff(original_logits, answer_tokens, per_prompt=True)
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)

    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    correct_residual_directions, incorrect_residual_directions = answer_residual_directions.unbind(dim=1)
    logit_diff_directions = correct_residual_directions - incorrect_residual_directions

    def residual_stack_to_logit_diff(residual_stack, cache, logit_diff_directions=logit_diff_directions):
        batch_size = residual_stack.size(-2)
        scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
        return einops.einsum(scaled_residual_stack, logit_diff_directions,
                             "... batch d_model, batch d_model -> ...") / batch_size

    return SimpleNamespace(**locals())


def test_ioi_task_setup_and_test_prompt(bridge, model):
    """The `utils.test_prompt(example_prompt, example_answer, model, prepend_bos=True)` cell (its printed text
    compared as it is) and the setup above (the rich tables trimmed)."""
    def snippet(model, lib):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            lib.utils.test_prompt("After John and Mary went to the store, John gave a bottle of milk to", " Mary", model,
                                  prepend_bos=True)
        s = setup_ioi(model)
        return {"test_prompt": printed.getvalue(), "prompts": s.prompts, "answers": s.answers,
                "answer_tokens": s.answer_tokens, "tokens": s.tokens, "per_prompt": s.original_per_prompt_diff,
                "average": s.original_average_logit_diff, "directions": s.answer_residual_directions,
                "logit_diff_directions": s.logit_diff_directions}

    ours, _ = run_both(snippet, bridge, model)
    assert ours["answer_tokens"].shape == (8, 2)


# ============================================================================ part 3, 2: Logit Attribution
def test_ioi_direct_logit_attribution(bridge, model):
    """Section 2 "Logit Attribution": the final token's residual stream scaled by `apply_ln_to_stack(layer=-1,
    pos_slice=-1)` against the logit-difference directions (`einops.einsum`), `residual_stack_to_logit_diff`
    on it, the logit lens (`accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)`),
    per layer (`decompose_resid`), per head (`stack_head_results`, rearranged "(layer head) ... -> layer
    head ..."), and `topk_of_Nd_tensor` (`np.unravel_index` of `utils.to_numpy(...)`) with the top 3 positive
    and negative heads' batch-mean patterns `cache["pattern", layer][:, head].mean(0)`."""
    def snippet(model, lib):
        utils = lib.utils
        s = setup_ioi(model)
        cache = s.cache
        final_residual_stream = cache["resid_post", -1]
        final_token_residual_stream = final_residual_stream[:, -1, :]
        scaled_final_token_residual_stream = cache.apply_ln_to_stack(final_token_residual_stream, layer=-1, pos_slice=-1)
        average_logit_diff = einops.einsum(scaled_final_token_residual_stream, s.logit_diff_directions,
                                           "batch d_model, batch d_model ->") / len(s.prompts)
        via_function = s.residual_stack_to_logit_diff(final_token_residual_stream, cache)

        accumulated_residual, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
        logit_lens_logit_diffs = s.residual_stack_to_logit_diff(accumulated_residual, cache)

        per_layer_residual, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
        per_layer_logit_diffs = s.residual_stack_to_logit_diff(per_layer_residual, cache)

        per_head_residual, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        per_head_residual = einops.rearrange(per_head_residual, "(layer head) ... -> layer head ...",
                                             layer=model.cfg.n_layers)
        per_head_logit_diffs = s.residual_stack_to_logit_diff(per_head_residual, cache)

        def topk_of_Nd_tensor(tensor, k):
            i = t.topk(tensor.flatten(), k).indices
            return np.array(np.unravel_index(utils.to_numpy(i), tensor.shape)).T.tolist()

        k = 3
        top = {}
        for head_type in ["Positive", "Negative"]:
            top_heads = topk_of_Nd_tensor(per_head_logit_diffs * (1 if head_type == "Positive" else -1), k)
            attn_patterns_for_important_heads = t.stack(
                [cache["pattern", layer][:, head].mean(0) for layer, head in top_heads])
            top[head_type] = (top_heads, attn_patterns_for_important_heads, model.to_str_tokens(s.tokens[0]),
                              [f"{layer}.{head}" for layer, head in top_heads])
        return {"average": average_logit_diff, "via_function": via_function, "accumulated": accumulated_residual,
                "labels": labels, "logit_lens": logit_lens_logit_diffs, "per_layer": per_layer_logit_diffs,
                "layer_labels": layer_labels, "per_head": per_head_logit_diffs, "head_labels": head_labels,
                "top": top}

    ours, _ = run_both(snippet, bridge, model)
    # ARENA asserts the calculated and the original logit difference are equal, which holds once from_pretrained
    # has folded the final LayerNorm's weight and bias into W_U; these weights are unprocessed, so the check
    # applies them by hand
    with t.no_grad():
        s = setup_ioi(model)
        scaled = s.cache.apply_ln_to_stack(s.cache["resid_post", -1][:, -1, :], layer=-1, pos_slice=-1)
        by_hand = ((scaled * model.ln_final.w + model.ln_final.b) * s.logit_diff_directions).sum(-1).mean()
    assert abs(by_hand - s.original_average_logit_diff) < 1e-4
    assert_same(ours["average"], ours["via_function"])
    # the per-layer attributions add up to the full stream's: the decomposition is linear with the cached scale
    assert abs(ours["per_layer"].sum() - ours["logit_lens"][-1]) < 1e-4


# ============================================================================ part 3, 3: Activation Patching
def test_ioi_resid_pre_patching_with_the_library_and_by_hand(bridge, model):
    """The first cells of section 3: corrupted tokens (each adjacent pair swapped), `to_string` of the first
    clean and corrupted prompt, `ioi_metric` and its three checks (1 on clean logits, 0 on corrupted, 0.5 on
    their mean; at 1e-4, see below), `patching.get_act_patch_resid_pre` called with keywords, and ARENA's by-hand
    `get_act_patch_resid_pre` (`patch_residual_component` on `get_act_name("resid_pre", layer)`; ARENA
    allocates its results on "cuda", here on `model.cfg.device`), asserted equal as ARENA does. Both asserts
    use this suite's 1e-4 instead of assert_close's defaults: the metric divides by the clean-minus-corrupted
    logit difference, small on random weights, which scales float32 rounding (workbench's batched sweep and
    the hook loop differ by 5e-5 here). The later
    `get_act_patch_block_every` cell is TransformerLens's function, run against workbench's in
    tests/test_tl_patching.py."""
    def snippet(model, lib):
        utils, patching = lib.utils, lib.patching
        s = setup_ioi(model)
        clean_tokens = s.tokens
        indices = [i + 1 if i % 2 == 0 else i - 1 for i in range(len(s.tokens))]
        corrupted_tokens = clean_tokens[indices]
        strings = (model.to_string(clean_tokens[0]), model.to_string(corrupted_tokens[0]))
        clean_logits, clean_cache = model.run_with_cache(clean_tokens)
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)
        clean_logit_diff = s.logits_to_ave_logit_diff(clean_logits, s.answer_tokens)
        corrupted_logit_diff = s.logits_to_ave_logit_diff(corrupted_logits, s.answer_tokens)

        def ioi_metric(logits, answer_tokens=s.answer_tokens, corrupted_logit_diff=corrupted_logit_diff,
                       clean_logit_diff=clean_logit_diff):
            patched_logit_diff = s.logits_to_ave_logit_diff(logits, answer_tokens)
            return (patched_logit_diff - corrupted_logit_diff) / (clean_logit_diff - corrupted_logit_diff)

        # ARENA's checks, at this suite's tolerance: on random weights the clean and corrupted logit differences
        # are close, so the metric's float32 rounding is larger than assert_close's default for floats
        t.testing.assert_close(ioi_metric(clean_logits).item(), 1.0, atol=1e-4, rtol=0)
        t.testing.assert_close(ioi_metric(corrupted_logits).item(), 0.0, atol=1e-4, rtol=0)
        t.testing.assert_close(ioi_metric((clean_logits + corrupted_logits) / 2).item(), 0.5, atol=1e-4, rtol=0)

        act_patch_resid_pre = patching.get_act_patch_resid_pre(
            model=model, corrupted_tokens=corrupted_tokens, clean_cache=clean_cache, patching_metric=ioi_metric)
        labels = [f"{tok} {i}" for i, tok in enumerate(model.to_str_tokens(clean_tokens[0]))]

        def patch_residual_component(corrupted_residual_component, hook, pos, clean_cache):
            corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
            return corrupted_residual_component

        def get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, patching_metric):
            model.reset_hooks()
            seq_len = corrupted_tokens.size(1)
            results = t.zeros(model.cfg.n_layers, seq_len, device=model.cfg.device, dtype=t.float32)
            for layer in range(model.cfg.n_layers):  # ARENA wraps this range in tqdm
                for position in range(seq_len):
                    hook_fn = functools.partial(patch_residual_component, pos=position, clean_cache=clean_cache)
                    patched_logits = model.run_with_hooks(
                        corrupted_tokens, fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)])
                    results[layer, position] = patching_metric(patched_logits)
            return results

        act_patch_resid_pre_own = get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, ioi_metric)
        t.testing.assert_close(act_patch_resid_pre, act_patch_resid_pre_own, atol=1e-4, rtol=0)  # ARENA: defaults
        return {"strings": strings, "clean": clean_logit_diff, "corrupted": corrupted_logit_diff,
                "library": act_patch_resid_pre, "by_hand": act_patch_resid_pre_own, "labels": labels}

    run_both(snippet, bridge, model)
