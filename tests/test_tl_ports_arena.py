"""ARENA chapter 1 (callummcdougall/ARENA_3.0, chapter1_transformer_interp), ported by changing the import only:
the intro to mech interp's cache, induction and circuits (OV / QK, composition scores) sections and the IOI
exercises' direct logit attribution.

Each test runs the exercise code (the solutions' text: `model.*`, `cache.*` and `FactoredMatrix` calls as ARENA
writes them; `t` is torch) on TransformerLens 4.x (the `bridge` fixture) and on a workbench model with the same
random GPT-2-shaped weights (`model`), comparing every number to 1e-4. Changes: the model is a fixture, layer and
head indices fit a 2-layer, 4-head model (ARENA's L1H4/L1H10 induction heads become L1H1/L1H3), sequence lengths
fit 64 positions, plotting returns what it would plot. The random model has no induction or IOI circuit: numbers
are compared, not interpreted.

The cells were re-typed after the notebook, not copied from its source: checking them line by line
against it is still open (issue 14)."""

import functools
from types import SimpleNamespace

import einops
import torch as t


from tl_port import run_both






# ============================================================================ 1.2 intro: caches and patterns
def test_cache_and_attention_pattern_by_hand(bridge, model):
    def snippet(gpt2_small, lib):
        device = gpt2_small.cfg.device
        model_description_text = """## Loading Models

HookedTransformer comes loaded with >40 open source GPT-style models. You can load any of them in with `HookedTransformer.from_pretrained(MODEL_NAME)`."""
        loss = gpt2_small(model_description_text, return_type="loss")
        logits = gpt2_small(model_description_text, return_type="logits")
        prediction = logits.argmax(dim=-1).squeeze()[:-1]
        true_tokens = gpt2_small.to_tokens(model_description_text).squeeze()[1:]
        is_correct = prediction == true_tokens

        gpt2_text = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning."
        gpt2_tokens = gpt2_small.to_tokens(gpt2_text)
        gpt2_logits, gpt2_cache = gpt2_small.run_with_cache(gpt2_tokens, remove_batch_dim=True)

        attn_patterns_from_shorthand = gpt2_cache["pattern", 0]
        attn_patterns_from_full_name = gpt2_cache["blocks.0.attn.hook_pattern"]
        t.testing.assert_close(attn_patterns_from_shorthand, attn_patterns_from_full_name)

        layer0_pattern_from_cache = gpt2_cache["pattern", 0]
        q, k = gpt2_cache["q", 0], gpt2_cache["k", 0]
        seq, nhead, headsize = q.shape
        layer0_attn_scores = einops.einsum(q, k, "seqQ n h, seqK n h -> n seqQ seqK")
        mask = t.triu(t.ones((seq, seq), dtype=t.bool), diagonal=1).to(device)
        layer0_attn_scores.masked_fill_(mask, -1e9)
        layer0_pattern_from_q_and_k = (layer0_attn_scores / headsize**0.5).softmax(-1)
        t.testing.assert_close(layer0_pattern_from_cache, layer0_pattern_from_q_and_k)
        return {"loss": loss, "is_correct": is_correct, "logits": gpt2_logits, "pattern": layer0_pattern_from_cache,
                "by_hand": layer0_pattern_from_q_and_k, "str_tokens": gpt2_small.to_str_tokens(gpt2_text)}

    run_both(snippet, bridge, model)


# ============================================================================ 1.2 intro: induction heads
def generate_repeated_tokens(model, seq_len, batch=1):
    """Generates a sequence of repeated random tokens (ARENA's solution; seeded here so both runs get the same)."""
    t.manual_seed(0)
    prefix = (t.ones(batch, 1) * model.tokenizer.bos_token_id).long()
    rep_tokens_half = t.randint(0, model.cfg.d_vocab, (batch, seq_len), dtype=t.int64)
    rep_tokens = t.cat([prefix, rep_tokens_half, rep_tokens_half], dim=-1).to(model.cfg.device)
    return rep_tokens


def get_log_probs(logits, tokens):
    logprobs = logits.log_softmax(dim=-1)
    # Get logprobs the first seq_len-1 predictions (so we can compare them with the actual next tokens)
    correct_logprobs = logprobs[:, :-1].gather(dim=-1, index=tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    return correct_logprobs


def test_induction_detection_by_hand(bridge, model):
    def snippet(model, lib):
        utils = lib.utils
        seq_len = 25
        batch = 1
        rep_tokens = generate_repeated_tokens(model, seq_len, batch)
        rep_logits, rep_cache = model.run_with_cache(rep_tokens)
        rep_cache.remove_batch_dim()
        log_probs = get_log_probs(rep_logits, rep_tokens).squeeze()

        def current_attn_detector(cache):
            attn_heads = []
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):
                    attention_pattern = cache["pattern", layer][head]
                    # take avg of diagonal elements
                    score = attention_pattern.diagonal().mean()
                    if score > 0.1:
                        attn_heads.append(f"{layer}.{head}")
            return attn_heads

        def prev_attn_detector(cache):
            attn_heads = []
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):
                    attention_pattern = cache["pattern", layer][head]
                    # take avg of (-1)-offset elements
                    score = attention_pattern.diagonal(-1).mean()
                    if score > 0.1:
                        attn_heads.append(f"{layer}.{head}")
            return attn_heads

        def induction_attn_detector(cache):
            attn_heads = []
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):
                    attention_pattern = cache["pattern", layer][head]
                    # take avg of (-seq_len+1)-offset elements
                    seq_len = (attention_pattern.shape[-1] - 1) // 2
                    score = attention_pattern.diagonal(-seq_len + 1).mean()
                    if score > 0.1:
                        attn_heads.append(f"{layer}.{head}")
            return attn_heads

        detected = [current_attn_detector(rep_cache), prev_attn_detector(rep_cache), induction_attn_detector(rep_cache)]

        # the hook version, on a batch
        rep_tokens_10 = generate_repeated_tokens(model, seq_len, 10)
        induction_score_store = t.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

        def induction_score_hook(pattern, hook):
            # Take the diagonal of attn paid from each dest posn to src posns (seq_len-1) tokens back
            # (This only has entries for tokens with index>=seq_len)
            induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
            # Get an average score per head
            induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
            # Store the result.
            induction_score_store[hook.layer(), :] = induction_score

        pattern_hook_names_filter = lambda name: name.endswith("pattern")
        model.run_with_hooks(
            rep_tokens_10,
            return_type=None,  # For efficiency, we don't need to calculate the logits
            fwd_hooks=[(pattern_hook_names_filter, induction_score_hook)],
        )

        def head_zero_ablation_hook(z, hook, head_index_to_ablate):
            z[:, :, head_index_to_ablate, :] = 0.0

        def get_ablation_scores(model, tokens):
            ablation_scores = t.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)
            # Calculating loss without any ablation, to act as a baseline
            model.reset_hooks()
            seq_len = (tokens.shape[1] - 1) // 2
            logits = model(tokens, return_type="logits")
            loss_no_ablation = -get_log_probs(logits, tokens)[:, -(seq_len - 1):].mean()
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):
                    # Use functools.partial to create a temporary hook function with the head number fixed
                    temp_hook_fn = functools.partial(head_zero_ablation_hook, head_index_to_ablate=head)
                    # Run the model with the ablation hook
                    ablated_logits = model.run_with_hooks(tokens, fwd_hooks=[(utils.get_act_name("z", layer), temp_hook_fn)])
                    # Calculate the loss difference (= negative correct logprobs), only on the last `seq_len` tokens
                    loss = -get_log_probs(ablated_logits, tokens)[:, -(seq_len - 1):].mean()
                    # Store the result, subtracting the clean loss so that a value of zero means no change in loss
                    ablation_scores[layer, head] = loss - loss_no_ablation
            return ablation_scores

        ablation_scores = get_ablation_scores(model, rep_tokens)
        return {"tokens": rep_tokens, "log_probs": log_probs, "detected": detected,
                "patterns": [rep_cache["pattern", layer] for layer in range(model.cfg.n_layers)],
                "induction_scores": induction_score_store, "ablation_scores": ablation_scores}

    ours, _ = run_both(snippet, bridge, model)
    assert ours["induction_scores"].abs().sum() > 0 and ours["ablation_scores"].abs().sum() > 0


def test_direct_logit_attribution_of_an_attention_only_decomposition(bridge, model):
    def snippet(model, lib):
        def logit_attribution(embed, l1_results, l2_results, W_U, tokens):
            W_U_correct_tokens = W_U[:, tokens[1:]]
            direct_attributions = einops.einsum(W_U_correct_tokens, embed[:-1], "emb seq, seq emb -> seq")
            l1_attributions = einops.einsum(W_U_correct_tokens, l1_results[:-1], "emb seq, seq nhead emb -> seq nhead")
            l2_attributions = einops.einsum(W_U_correct_tokens, l2_results[:-1], "emb seq, seq nhead emb -> seq nhead")
            return t.concat([direct_attributions.unsqueeze(-1), l1_attributions, l2_attributions], dim=-1)

        text = "We think that powerful, significantly superhuman machine intelligence is more likely than not to be created this century."
        logits, cache = model.run_with_cache(text, remove_batch_dim=True)
        cache.compute_head_results()  # ARENA's model sets use_attn_result; a GPT-2 bridge does not
        str_tokens = model.to_str_tokens(text)
        tokens = model.to_tokens(text)

        with t.inference_mode():
            embed = cache["embed"]
            l1_results = cache["result", 0]
            l2_results = cache["result", 1]
            logit_attr = logit_attribution(embed, l1_results, l2_results, model.W_U, tokens[0])
            # Uses fancy indexing to get a len(tokens[0])-1 length tensor, where the kth entry is the predicted logit for the correct k+1th token
            correct_token_logits = logits[0, t.arange(len(tokens[0]) - 1), tokens[0, 1:]]
        return {"logit_attr": logit_attr, "correct_token_logits": correct_token_logits, "str_tokens": str_tokens,
                "pos_embed": cache["pos_embed"]}

    run_both(snippet, bridge, model)


# ============================================================================ 1.2 intro: circuits (OV / QK)
def test_full_ov_circuit_and_top_1_accuracy(bridge, model):
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

        t.manual_seed(0)
        indices = t.randint(0, model.cfg.d_vocab, (200,))
        full_OV_circuit_sample = full_OV_circuit[indices, indices].AB

        def top_1_acc(full_OV_circuit, batch_size=1000):
            """
            Return the fraction of the time that the maximum value is on the circuit diagonal.
            """
            total = 0
            for indices in t.split(t.arange(full_OV_circuit.shape[0], device=device), batch_size):
                AB_slice = full_OV_circuit[indices].AB
                total += (t.argmax(AB_slice, dim=1) == indices).float().sum().item()
            return total / full_OV_circuit.shape[0]

        # the effective OV circuit of the two induction heads together
        W_O_both = einops.rearrange(model.W_O[1, [1, 3]], "head d_head d_model -> (head d_head) d_model")
        W_V_both = einops.rearrange(model.W_V[1, [1, 3]], "head d_model d_head -> d_model (head d_head)")
        W_OV_eff = W_E @ FactoredMatrix(W_V_both, W_O_both) @ W_U

        # the same circuit through model.OV, as TransformerLens's FactoredMatrix indexing gives it
        OV_all = model.OV[layer, head_index]
        return {
            "sample": full_OV_circuit_sample, "shape": tuple(full_OV_circuit.shape),
            # ARENA runs top_1_acc over all 50257 tokens; the first 3000 keep the test fast
            "top_1": top_1_acc(full_OV_circuit[:3000, :3000]), "top_1_both": top_1_acc(W_OV_eff[:3000, :3000]),
            "norm": full_OV_circuit.norm(), "S": full_OV_circuit.S, "from_model_OV": (W_E @ OV_all @ W_U)[indices, indices].AB,
            "eig": W_OV_eff.eigenvalues,
        }

    run_both(snippet, bridge, model)


def test_qk_circuit_positional(bridge, model):
    def snippet(model, lib):
        def mask_scores(attn_scores):
            """Mask the attention scores so that tokens don't attend to previous tokens."""
            assert attn_scores.shape == (model.cfg.n_ctx, model.cfg.n_ctx)
            mask = t.tril(t.ones_like(attn_scores)).bool()
            neg_inf = t.tensor(-1.0e6).to(attn_scores.device)
            masked_attn_scores = t.where(mask, attn_scores, neg_inf)
            return masked_attn_scores

        layer = 0
        head_index = 2

        # Compute full QK matrix (for positional embeddings)
        W_pos = model.W_pos
        W_QK = model.W_Q[layer, head_index] @ model.W_K[layer, head_index].T
        pos_by_pos_scores = W_pos @ W_QK @ W_pos.T

        # Mask, scale and softmax the scores
        masked_scaled = mask_scores(pos_by_pos_scores / model.cfg.d_head**0.5)
        pos_by_pos_pattern = t.softmax(masked_scaled, dim=-1)

        # Check the pattern is similar to the one we expect (the previous-token head has most weight on the -1 diagonal)
        prev_token_score = t.diagonal(pos_by_pos_pattern, -1).mean().item()
        # the factored form through model.QK
        factored = (W_pos @ model.QK[layer, head_index] @ W_pos.T).AB
        return {"pattern": pos_by_pos_pattern, "prev_token_score": prev_token_score, "factored": factored,
                "scores": pos_by_pos_scores}

    run_both(snippet, bridge, model)


def test_decompose_qk_input_and_attention_score_decomposition(bridge, model):
    def snippet(model, lib):
        seq_len = 25
        rep_tokens = generate_repeated_tokens(model, seq_len, 1)
        rep_logits, rep_cache = model.run_with_cache(rep_tokens)
        rep_cache.remove_batch_dim()
        rep_cache.compute_head_results()  # ARENA's model sets use_attn_result; a GPT-2 bridge does not

        def decompose_qk_input(cache):
            """
            Retrieves all the input tensors to the first attention layer, and concatenates them along the 0th dim.
            """
            y0 = cache["embed"].unsqueeze(0)  # shape (1, seq, d_model)
            y1 = cache["pos_embed"].unsqueeze(0)  # shape (1, seq, d_model)
            y_rest = cache["result", 0].transpose(0, 1)  # shape (4, seq, d_model)
            return t.concat([y0, y1, y_rest], dim=0)

        def decompose_q(decomposed_qk_input, ind_head_index, model):
            W_Q = model.W_Q[1, ind_head_index]
            return einops.einsum(decomposed_qk_input, W_Q, "n seq d_model, d_model d_head -> n seq d_head")

        def decompose_k(decomposed_qk_input, ind_head_index, model):
            W_K = model.W_K[1, ind_head_index]
            return einops.einsum(decomposed_qk_input, W_K, "n seq d_model, d_model d_head -> n seq d_head")

        def decompose_attn_scores(decomposed_q, decomposed_k, model):
            return einops.einsum(
                decomposed_q, decomposed_k,
                "q_comp q_pos d_model, k_comp k_pos d_model -> q_comp k_comp q_pos k_pos",
            ) / (model.cfg.d_head**0.5)

        ind_head_index = 3
        decomposed_qk_input = decompose_qk_input(rep_cache)
        decomposed_q = decompose_q(decomposed_qk_input, ind_head_index, model)
        decomposed_k = decompose_k(decomposed_qk_input, ind_head_index, model)
        decomposed_scores = decompose_attn_scores(decomposed_q, decomposed_k, model)
        decomposed_stds = einops.reduce(
            decomposed_scores, "query_decomp key_decomp query_pos key_pos -> query_decomp key_decomp", t.std
        )
        return {"input": decomposed_qk_input, "q": decomposed_q, "k": decomposed_k, "stds": decomposed_stds}

    run_both(snippet, bridge, model)


def test_composition_scores(bridge, model):
    def snippet(model, lib):
        def get_comp_score(W_A, W_B):
            """
            Return the composition score between W_A and W_B.
            """
            W_A_norm = W_A.pow(2).sum().sqrt()
            W_B_norm = W_B.pow(2).sum().sqrt()
            W_AB_norm = (W_A @ W_B).pow(2).sum().sqrt()
            return (W_AB_norm / (W_A_norm * W_B_norm)).item()

        # Get all QK and OV matrices
        W_QK = model.W_Q @ model.W_K.transpose(-1, -2)
        W_OV = model.W_V @ model.W_O

        # Define tensors to hold the composition scores
        composition_scores = {
            "Q": t.zeros(model.cfg.n_heads, model.cfg.n_heads).to(model.cfg.device),
            "K": t.zeros(model.cfg.n_heads, model.cfg.n_heads).to(model.cfg.device),
            "V": t.zeros(model.cfg.n_heads, model.cfg.n_heads).to(model.cfg.device),
        }
        for i in range(model.cfg.n_heads):
            for j in range(model.cfg.n_heads):
                composition_scores["Q"][i, j] = get_comp_score(W_OV[0, i], W_QK[1, j])
                composition_scores["K"][i, j] = get_comp_score(W_OV[0, i], W_QK[1, j].T)
                composition_scores["V"][i, j] = get_comp_score(W_OV[0, i], W_OV[1, j])

        # the same through the factored circuits: FactoredMatrix.norm() is the Frobenius norm
        factored = t.tensor([[(model.OV[0, i] @ model.QK[1, j]).norm() / (model.OV[0, i].norm() * model.QK[1, j].norm())
                              for j in range(model.cfg.n_heads)] for i in range(model.cfg.n_heads)])
        return {"scores": composition_scores, "factored": factored}

    ours, _ = run_both(snippet, bridge, model)
    assert (ours["factored"] - ours["scores"]["Q"]).abs().max() < 1e-4


# ============================================================================ IOI: direct logit attribution
def setup_ioi(model):
    prompt_format = [
        "When John and Mary went to the shops,{} gave the bag to",
        "When Tom and James went to the park,{} gave the ball to",
        "When Dan and Sid went to the shops,{} gave an apple to",
        "After Martin and Amy went to the park,{} gave a drink to",
    ]
    name_pairs = [
        (" Mary", " John"),
        (" Tom", " James"),
        (" Dan", " Sid"),
        (" Martin", " Amy"),
    ]

    # Define 8 prompts, in 4 groups of 2 (with adjacent prompts having answers swapped)
    prompts = [prompt.format(name) for (prompt, names) in zip(prompt_format, name_pairs) for name in names[::-1]]
    # Define the answers for each prompt, in the form (correct, incorrect)
    answers = [names[::i] for names in name_pairs for i in (1, -1)]
    # Define the answer tokens (same shape as the answers)
    answer_tokens = t.concat([model.to_tokens(names, prepend_bos=False).T for names in answers])

    tokens = model.to_tokens(prompts, prepend_bos=True)
    # Move the tokens to the GPU
    tokens = tokens.to(model.cfg.device)
    # Run the model and cache all activations
    original_logits, cache = model.run_with_cache(tokens)

    def logits_to_ave_logit_diff(logits, answer_tokens=answer_tokens, per_prompt=False):
        """
        Returns logit difference between the correct and incorrect answer.

        If per_prompt=True, return the array of differences rather than the average.
        """
        # Only the final logits are relevant for the answer
        final_logits = logits[:, -1, :]
        # Get the logits corresponding to the indirect object / subject tokens respectively
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        # Find logit difference
        correct_logits, incorrect_logits = answer_logits.unbind(dim=-1)
        answer_logit_diff = correct_logits - incorrect_logits
        return answer_logit_diff if per_prompt else answer_logit_diff.mean()

    original_per_prompt_diff = logits_to_ave_logit_diff(original_logits, answer_tokens, per_prompt=True)
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)

    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)  # [batch 2 d_model]
    print("Answer residual directions shape:", answer_residual_directions.shape)

    correct_residual_directions, incorrect_residual_directions = answer_residual_directions.unbind(dim=1)
    logit_diff_directions = correct_residual_directions - incorrect_residual_directions  # [batch d_model]
    print(f"Logit difference directions shape:", logit_diff_directions.shape)
    return SimpleNamespace(**locals())


def residual_stack_to_logit_diff(residual_stack, cache, logit_diff_directions):
    """
    Gets the avg logit difference between the correct and incorrect answer for a given stack of components in the
    residual stream.
    """
    batch_size = residual_stack.size(-2)
    scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
    return einops.einsum(
        scaled_residual_stack, logit_diff_directions, "... batch d_model, batch d_model -> ..."
    ) / batch_size


def test_ioi_logit_diff_directions(bridge, model):
    def snippet(model, lib):
        s = setup_ioi(model)
        cache = s.cache
        # cache syntax: resid_post is the residual stream at the end of the layer, -1 gets the final layer
        final_residual_stream = cache["resid_post", -1]  # [batch seq d_model]
        print(f"Final residual stream shape: {final_residual_stream.shape}")
        final_token_residual_stream = final_residual_stream[:, -1, :]  # [batch d_model]

        # Apply LayerNorm scaling (to just the final sequence position)
        # pos_slice is the subset of the positions we take - here the final token of each prompt
        scaled_final_token_residual_stream = cache.apply_ln_to_stack(final_token_residual_stream, layer=-1, pos_slice=-1)

        average_logit_diff = einops.einsum(
            scaled_final_token_residual_stream, s.logit_diff_directions, "batch d_model, batch d_model ->"
        ) / len(s.prompts)

        print(f"Calculated average logit diff: {average_logit_diff:.10f}")
        print(f"Original logit difference:     {s.original_average_logit_diff:.10f}")
        return {"answer_tokens": s.answer_tokens, "tokens": s.tokens, "per_prompt": s.original_per_prompt_diff,
                "original": s.original_average_logit_diff, "directions": s.logit_diff_directions,
                "calculated": average_logit_diff, "via_function": residual_stack_to_logit_diff(
                    final_token_residual_stream, cache, s.logit_diff_directions)}

    ours, _ = run_both(snippet, bridge, model)
    # ARENA checks calculated == original, true once from_pretrained has folded the final LayerNorm's weight
    # and bias into W_U; these weights are unprocessed, so the check applies them by hand
    assert ours["answer_tokens"].shape == (8, 2)
    with t.no_grad():
        s = setup_ioi(model)
        scaled = s.cache.apply_ln_to_stack(s.cache["resid_post", -1][:, -1, :], layer=-1, pos_slice=-1)
        by_hand = ((scaled * model.ln_final.w + model.ln_final.b) * s.logit_diff_directions).sum(-1).mean()
    assert abs(by_hand - ours["original"]) < 1e-4


def test_ioi_per_layer_and_per_head_dla(bridge, model):
    def snippet(model, lib):
        s = setup_ioi(model)
        cache = s.cache
        logit_diff = functools.partial(residual_stack_to_logit_diff, logit_diff_directions=s.logit_diff_directions)

        accumulated_residual, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
        # accumulated_residual has shape (component, batch, d_model)
        logit_lens_logit_diffs = logit_diff(accumulated_residual, cache)  # [component]

        per_layer_residual, per_layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
        per_layer_logit_diffs = logit_diff(per_layer_residual, cache)

        per_head_residual, per_head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        per_head_residual = einops.rearrange(
            per_head_residual, "(layer head) ... -> layer head ...", layer=model.cfg.n_layers
        )
        per_head_logit_diffs = logit_diff(per_head_residual, cache)

        def topk_of_Nd_tensor(tensor, k):
            """
            Helper function: does same as tensor.topk(k).indices, but works over 2D tensors.
            Returns a list of indices, i.e. shape [k, tensor.ndim].

            Example: if tensor is 2D array of values for each head in each layer, this will
            return a list of heads.
            """
            i = t.topk(tensor.flatten(), k).indices
            return [list(int(x) for x in idx) for idx in zip(*[t.unravel_index(i, tensor.shape)][0])]

        k = 3
        for head_type in ["Positive", "Negative"]:
            # Get the heads with largest (or smallest) contribution to the logit difference
            top_heads = topk_of_Nd_tensor(per_head_logit_diffs * (1 if head_type == "Positive" else -1), k)
            # Get all their attention patterns
            attn_patterns_for_important_heads = t.stack([cache["pattern", layer][:, head][0] for layer, head in top_heads])
            if head_type == "Positive":
                positive = (top_heads, attn_patterns_for_important_heads)
            else:
                negative = (top_heads, attn_patterns_for_important_heads)

        # logit_attrs: TransformerLens's own direct logit attribution of the same stack
        attrs = cache.logit_attrs(per_layer_residual, tokens=s.answer_tokens[:, 0], incorrect_tokens=s.answer_tokens[:, 1],
                                  pos_slice=-1)
        return {"accumulated": accumulated_residual, "labels": labels, "logit_lens": logit_lens_logit_diffs,
                "per_layer": per_layer_logit_diffs, "per_layer_labels": per_layer_labels,
                "per_head": per_head_logit_diffs, "per_head_labels": per_head_labels,
                "positive": positive, "negative": negative, "logit_attrs": attrs}

    ours, _ = run_both(snippet, bridge, model)
    # the per-layer attributions add up to the full stream's: the decomposition is linear with the cached scale
    assert abs(ours["per_layer"].sum() - ours["logit_lens"][-1]) < 1e-4


def test_ioi_residual_stream_patching_by_hand(bridge, model):
    def snippet(model, lib):
        utils = lib.utils
        s = setup_ioi(model)
        clean_tokens, clean_cache = s.tokens, s.cache
        # Swap each adjacent pair to get corrupted tokens
        indices = [i + 1 if i % 2 == 0 else i - 1 for i in range(len(clean_tokens))]
        corrupted_tokens = clean_tokens[indices]
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)
        clean_logit_diff = s.logits_to_ave_logit_diff(s.original_logits, s.answer_tokens)
        corrupted_logit_diff = s.logits_to_ave_logit_diff(corrupted_logits, s.answer_tokens)

        def ioi_metric(logits, answer_tokens=s.answer_tokens, corrupted_logit_diff=corrupted_logit_diff,
                       clean_logit_diff=clean_logit_diff):
            """
            Linear function of logit diff, calibrated so that it equals 0 when performance is
            same as on corrupted input, and 1 when performance is same as on clean input.
            """
            patched_logit_diff = s.logits_to_ave_logit_diff(logits, answer_tokens)
            return (patched_logit_diff - corrupted_logit_diff) / (clean_logit_diff - corrupted_logit_diff)

        def patch_residual_component(corrupted_residual_component, hook, pos, clean_cache):
            """
            Patches a given sequence position in the residual stream, using the value
            from the clean cache.
            """
            corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
            return corrupted_residual_component

        def get_act_patch_block_every(model, corrupted_tokens, clean_cache, patching_metric):
            """
            Returns an array of results of patching each position at each layer in the residual
            stream, using the value from the clean cache.

            The results are calculated using the patching_metric function, which should be
            called on the model's logit output.
            """
            model.reset_hooks()
            results = t.zeros(3, model.cfg.n_layers, corrupted_tokens.size(1), device=model.cfg.device, dtype=t.float32)

            for component_idx, component in enumerate(["resid_pre", "attn_out", "mlp_out"]):
                for layer in range(model.cfg.n_layers):
                    for position in range(corrupted_tokens.shape[1]):
                        hook_fn = functools.partial(patch_residual_component, pos=position, clean_cache=clean_cache)
                        patched_logits = model.run_with_hooks(
                            corrupted_tokens,
                            fwd_hooks=[(utils.get_act_name(component, layer), hook_fn)],
                        )
                        results[component_idx, layer, position] = patching_metric(patched_logits)

            return results

        act_patch_block_every = get_act_patch_block_every(model, corrupted_tokens, clean_cache, ioi_metric)
        return {"clean": clean_logit_diff, "corrupted": corrupted_logit_diff, "results": act_patch_block_every}

    run_both(snippet, bridge, model)
