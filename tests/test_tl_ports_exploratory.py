"""TransformerLens's Exploratory_Analysis_Demo (demos/Exploratory_Analysis_Demo.ipynb), the IOI walk-through,
ported by changing the import only.

Each test is a run of the notebook's cells, its code as the notebook writes it, on TransformerLens 4.x (the
`bridge` fixture) and on a workbench model with the same random GPT-2-shaped weights (`model`), with `utils`
from the library under test; every number is compared to 1e-4. Changes to the notebook's text: the model is a
fixture, `device` is the model's, plotting calls return what they would plot, and top-k sizes fit a 2-layer,
4-head model. The random model cannot do IOI: the numbers are compared, not interpreted.

The cells were re-typed after the notebook, not copied from its source: checking them line by line
against it is still open (issue 14)."""

from functools import partial
from types import SimpleNamespace

import einops
import pytest
import torch
import transformer_lens.utilities
from fancy_einsum import einsum

import workbench

from tl_port import WB, assert_same, run_both






def setup_ioi(model):
    """The notebook's prompt, answer and cache cells."""
    device = model.cfg.device
    prompt_format = [
        "When John and Mary went to the shops,{} gave the bag to",
        "When Tom and James went to the park,{} gave the ball to",
        "When Dan and Sid went to the shops,{} gave an apple to",
        "After Martin and Amy went to the park,{} gave a drink to",
    ]
    names = [
        (" Mary", " John"),
        (" Tom", " James"),
        (" Dan", " Sid"),
        (" Martin", " Amy"),
    ]
    # List of prompts
    prompts = []
    # List of answers, in the format (correct, incorrect)
    answers = []
    # List of the token (ie an integer) corresponding to each answer, in the format (correct_token, incorrect_token)
    answer_tokens = []
    for i in range(len(prompt_format)):
        for j in range(2):
            answers.append((names[i][j], names[i][1 - j]))
            answer_tokens.append(
                (
                    model.to_single_token(answers[-1][0]),
                    model.to_single_token(answers[-1][1]),
                )
            )
            # Insert the *incorrect* answer to the prompt, making the correct answer the indirect object.
            prompts.append(prompt_format[i].format(answers[-1][1]))
    answer_tokens = torch.tensor(answer_tokens).to(device)

    tokens = model.to_tokens(prompts, prepend_bos=True)
    # Move the tokens to the GPU
    tokens = tokens.to(device)
    # Run the model and cache all activations
    original_logits, cache = model.run_with_cache(tokens)

    def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
        # Only the final logits are relevant for the answer
        final_logits = logits[:, -1, :]
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
        if per_prompt:
            return answer_logit_diff
        else:
            return answer_logit_diff.mean()

    print(
        "Per prompt logit difference:",
        logits_to_ave_logit_diff(original_logits, answer_tokens, per_prompt=True)
        .detach()
        .cpu()
        .round(decimals=3),
    )
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)
    print(
        "Average logit difference:",
        round(logits_to_ave_logit_diff(original_logits, answer_tokens).item(), 3),
    )

    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    print("Answer residual directions shape:", answer_residual_directions.shape)
    logit_diff_directions = (
        answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    )
    print("Logit difference directions shape:", logit_diff_directions.shape)
    return SimpleNamespace(**locals())


def test_logit_difference_and_its_direction(bridge, model):
    def snippet(model, lib):
        s = setup_ioi(model)
        cache, prompts, logit_diff_directions = s.cache, s.prompts, s.logit_diff_directions
        # cache syntax - resid_post is the residual stream at the end of the layer, -1 gets the final layer. The general syntax is [activation_name, layer_index, sub_layer_type].
        final_residual_stream = cache["resid_post", -1]
        print("Final residual stream shape:", final_residual_stream.shape)
        final_token_residual_stream = final_residual_stream[:, -1, :]
        # Apply LayerNorm scaling
        # pos_slice is the subset of the positions we take - here the final token of each prompt
        scaled_final_token_residual_stream = cache.apply_ln_to_stack(
            final_token_residual_stream, layer=-1, pos_slice=-1
        )

        average_logit_diff = einsum(
            "batch d_model, batch d_model -> ",
            scaled_final_token_residual_stream,
            logit_diff_directions,
        ) / len(prompts)
        print("Calculated average logit diff:", round(average_logit_diff.item(), 3))
        print("Original logit difference:", round(s.original_average_logit_diff.item(), 3))
        return {
            "tokens": s.tokens, "answer_tokens": s.answer_tokens, "logits": s.original_logits,
            "original": s.original_average_logit_diff, "directions": s.answer_residual_directions,
            "calculated": average_logit_diff,
        }

    run_both(snippet, bridge, model)


def residual_stack_to_logit_diff(residual_stack, cache, logit_diff_directions, prompts):
    scaled_residual_stack = cache.apply_ln_to_stack(
        residual_stack, layer=-1, pos_slice=-1
    )
    return einsum(
        "... batch d_model, batch d_model -> ...",
        scaled_residual_stack,
        logit_diff_directions,
    ) / len(prompts)


def test_logit_lens_layer_attribution_and_head_attribution(bridge, model):
    def snippet(model, lib):
        s = setup_ioi(model)
        cache = s.cache
        stack_to_diff = partial(residual_stack_to_logit_diff, logit_diff_directions=s.logit_diff_directions, prompts=s.prompts)

        accumulated_residual, labels = cache.accumulated_resid(
            layer=-1, incl_mid=True, pos_slice=-1, return_labels=True
        )
        logit_lens_logit_diffs = stack_to_diff(accumulated_residual, cache)

        per_layer_residual, per_layer_labels = cache.decompose_resid(
            layer=-1, pos_slice=-1, return_labels=True
        )
        per_layer_logit_diffs = stack_to_diff(per_layer_residual, cache)

        per_head_residual, per_head_labels = cache.stack_head_results(
            layer=-1, pos_slice=-1, return_labels=True
        )
        per_head_logit_diffs = stack_to_diff(per_head_residual, cache)
        per_head_logit_diffs = einops.rearrange(
            per_head_logit_diffs,
            "(layer head_index) -> layer head_index",
            layer=model.cfg.n_layers,
            head_index=model.cfg.n_heads,
        )
        return {
            "accumulated": accumulated_residual, "labels": labels, "logit_lens": logit_lens_logit_diffs,
            "per_layer": per_layer_residual, "per_layer_labels": per_layer_labels, "per_layer_diffs": per_layer_logit_diffs,
            "per_head": per_head_residual, "per_head_labels": per_head_labels, "per_head_diffs": per_head_logit_diffs,
        }

    ours, _ = run_both(snippet, bridge, model)
    # the decomposition adds up: the components' logit differences sum to the calculated average logit diff
    assert abs(ours["per_layer_diffs"].sum() - ours["logit_lens"][-1]) < 1e-4


def test_attention_patterns_of_top_heads(bridge, model):
    def snippet(model, lib):
        s = setup_ioi(model)
        per_head_residual = s.cache.stack_head_results(layer=-1, pos_slice=-1)
        per_head_logit_diffs = residual_stack_to_logit_diff(per_head_residual, s.cache, s.logit_diff_directions, s.prompts)
        per_head_logit_diffs = einops.rearrange(
            per_head_logit_diffs,
            "(layer head_index) -> layer head_index",
            layer=model.cfg.n_layers,
            head_index=model.cfg.n_heads,
        )

        def visualize_attention_patterns(heads, local_cache, local_tokens, title="", max_width=700):
            # Heads are given as a list of integers or a single integer in [0, n_layers * n_heads)
            if isinstance(heads, int):
                heads = [heads]
            elif isinstance(heads, list) or isinstance(heads, torch.Tensor):
                heads = heads
            labels = []
            patterns = []
            batch_index = 0
            for head in heads:
                # Set the label
                layer = head // model.cfg.n_heads
                head_index = head % model.cfg.n_heads
                labels.append(f"L{layer}H{head_index}")
                # Get the attention patterns for the head
                # Attention patterns have shape [batch, head_index, query_pos, key_pos]
                patterns.append(local_cache["attn", layer][batch_index, head_index])
            # Convert the tokens to strings (for the axis labels)
            str_tokens = model.to_str_tokens(local_tokens)
            # Combine the patterns into a single tensor
            patterns = torch.stack(patterns, dim=-1)
            return str_tokens, labels, patterns

        top_k = 3
        top_positive_logit_attr_heads = torch.topk(
            per_head_logit_diffs.flatten(), k=top_k
        ).indices
        positive = visualize_attention_patterns(
            top_positive_logit_attr_heads, s.cache, s.tokens[0], f"Top {top_k} Positive Logit Attribution Heads"
        )
        top_negative_logit_attr_heads = torch.topk(
            -per_head_logit_diffs.flatten(), k=top_k
        ).indices
        negative = visualize_attention_patterns(
            top_negative_logit_attr_heads, s.cache, s.tokens[0], title=f"Top {top_k} Negative Logit Attribution Heads"
        )
        return {"top": top_positive_logit_attr_heads, "positive": positive,
                "bottom": top_negative_logit_attr_heads, "negative": negative}

    run_both(snippet, bridge, model)


def setup_patching(model, utils):
    s = setup_ioi(model)
    corrupted_prompts = []
    for i in range(0, len(s.prompts), 2):
        corrupted_prompts.append(s.prompts[i + 1])
        corrupted_prompts.append(s.prompts[i])
    corrupted_tokens = model.to_tokens(corrupted_prompts, prepend_bos=True)
    corrupted_logits, corrupted_cache = model.run_with_cache(
        corrupted_tokens, return_type="logits"
    )
    corrupted_average_logit_diff = s.logits_to_ave_logit_diff(corrupted_logits, s.answer_tokens)
    print("Corrupted Average Logit Diff", round(corrupted_average_logit_diff.item(), 2))
    print("Clean Average Logit Diff", round(s.original_average_logit_diff.item(), 2))

    def normalize_patched_logit_diff(patched_logit_diff):
        # Subtract corrupted logit diff to measure the improvement, divide by the total improvement from clean to corrupted to normalise
        # 0 means zero change, negative means actively made worse, 1 means totally recovered clean performance, >1 means actively *improved* on clean performance
        return (patched_logit_diff - corrupted_average_logit_diff) / (
            s.original_average_logit_diff - corrupted_average_logit_diff
        )

    s.__dict__.update(corrupted_tokens=corrupted_tokens, corrupted_average_logit_diff=corrupted_average_logit_diff,
                      corrupted_cache=corrupted_cache, normalize_patched_logit_diff=normalize_patched_logit_diff)
    return s


def patch_residual_component(
    corrupted_residual_component,
    hook,
    pos,
    clean_cache,
):
    corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
    return corrupted_residual_component


def test_residual_stream_and_layer_patching_by_hand(bridge, model):
    def snippet(model, lib):
        utils = lib.utils
        s = setup_patching(model, utils)
        tokens, cache, device = s.tokens, s.cache, s.device
        corrupted_tokens, answer_tokens = s.corrupted_tokens, s.answer_tokens
        logits_to_ave_logit_diff, normalize_patched_logit_diff = s.logits_to_ave_logit_diff, s.normalize_patched_logit_diff

        patched_residual_stream_diff = torch.zeros(
            model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
        )
        for layer in range(model.cfg.n_layers):
            for position in range(tokens.shape[1]):
                hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
                patched_logits = model.run_with_hooks(
                    corrupted_tokens,
                    fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)],
                    return_type="logits",
                )
                patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)

                patched_residual_stream_diff[layer, position] = normalize_patched_logit_diff(
                    patched_logit_diff
                )

        patched_attn_diff = torch.zeros(
            model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
        )
        patched_mlp_diff = torch.zeros(
            model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
        )
        for layer in range(model.cfg.n_layers):
            for position in range(tokens.shape[1]):
                hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
                patched_attn_logits = model.run_with_hooks(
                    corrupted_tokens,
                    fwd_hooks=[(utils.get_act_name("attn_out", layer), hook_fn)],
                    return_type="logits",
                )
                patched_attn_logit_diff = logits_to_ave_logit_diff(
                    patched_attn_logits, answer_tokens
                )
                patched_mlp_logits = model.run_with_hooks(
                    corrupted_tokens,
                    fwd_hooks=[(utils.get_act_name("mlp_out", layer), hook_fn)],
                    return_type="logits",
                )
                patched_mlp_logit_diff = logits_to_ave_logit_diff(
                    patched_mlp_logits, answer_tokens
                )

                patched_attn_diff[layer, position] = normalize_patched_logit_diff(
                    patched_attn_logit_diff
                )
                patched_mlp_diff[layer, position] = normalize_patched_logit_diff(
                    patched_mlp_logit_diff
                )
        return {"corrupted": s.corrupted_average_logit_diff, "resid": patched_residual_stream_diff,
                "attn": patched_attn_diff, "mlp": patched_mlp_diff}

    ours, _ = run_both(snippet, bridge, model)
    # clean and corrupted prompts differ at one position (the second name): patching it into layer 0's input
    # is the clean run (1.0)
    s = setup_patching(model, WB.utils)
    differ = (s.tokens != s.corrupted_tokens).any(0).nonzero().flatten()
    assert len(differ) == 1
    assert abs(ours["resid"][0, differ.item()].item() - 1.0) < 1e-4


def patch_head_vector(
    corrupted_head_vector,
    hook,
    head_index,
    clean_cache,
):
    corrupted_head_vector[:, :, head_index, :] = clean_cache[hook.name][
        :, :, head_index, :
    ]
    return corrupted_head_vector


def patch_head_pattern(
    corrupted_head_pattern,
    hook,
    head_index,
    clean_cache,
):
    corrupted_head_pattern[:, head_index, :, :] = clean_cache[hook.name][
        :, head_index, :, :
    ]
    return corrupted_head_pattern


def test_head_output_and_pattern_patching_by_hand(bridge, model):
    def snippet(model, lib):
        utils = lib.utils
        s = setup_patching(model, utils)
        cache, device = s.cache, s.device
        corrupted_tokens, answer_tokens = s.corrupted_tokens, s.answer_tokens
        logits_to_ave_logit_diff, normalize_patched_logit_diff = s.logits_to_ave_logit_diff, s.normalize_patched_logit_diff

        patched_head_z_diff = torch.zeros(
            model.cfg.n_layers, model.cfg.n_heads, device=device, dtype=torch.float32
        )
        for layer in range(model.cfg.n_layers):
            for head_index in range(model.cfg.n_heads):
                hook_fn = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
                patched_logits = model.run_with_hooks(
                    corrupted_tokens,
                    fwd_hooks=[(utils.get_act_name("z", layer, "attn"), hook_fn)],
                    return_type="logits",
                )
                patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)

                patched_head_z_diff[layer, head_index] = normalize_patched_logit_diff(
                    patched_logit_diff
                )

        patched_head_v_diff = torch.zeros(
            model.cfg.n_layers, model.cfg.n_heads, device=device, dtype=torch.float32
        )
        for layer in range(model.cfg.n_layers):
            for head_index in range(model.cfg.n_heads):
                hook_fn = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
                patched_logits = model.run_with_hooks(
                    corrupted_tokens,
                    fwd_hooks=[(utils.get_act_name("v", layer, "attn"), hook_fn)],
                    return_type="logits",
                )
                patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)

                patched_head_v_diff[layer, head_index] = normalize_patched_logit_diff(
                    patched_logit_diff
                )

        patched_head_attn_diff = torch.zeros(
            model.cfg.n_layers, model.cfg.n_heads, device=device, dtype=torch.float32
        )
        for layer in range(model.cfg.n_layers):
            for head_index in range(model.cfg.n_heads):
                hook_fn = partial(patch_head_pattern, head_index=head_index, clean_cache=cache)
                patched_logits = model.run_with_hooks(
                    corrupted_tokens,
                    fwd_hooks=[(utils.get_act_name("attn", layer, "attn"), hook_fn)],
                    return_type="logits",
                )
                patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)

                patched_head_attn_diff[layer, head_index] = normalize_patched_logit_diff(
                    patched_logit_diff
                )
        return {"z": patched_head_z_diff, "v": patched_head_v_diff, "pattern": patched_head_attn_diff}

    ours, _ = run_both(snippet, bridge, model)
    assert ours["z"].abs().sum() > 0


def test_a_layer_given_as_a_tensor_as_the_notebook_passes_it(bridge, model, tokens):
    """`topk(...).indices // n_heads` is a 0-d tensor; the notebook indexes the cache with it (found by the
    attention-pattern cell above). TransformerLens formats it into the name; workbench takes its int."""
    layer = torch.tensor(5) // 4
    assert workbench.utils.get_act_name("z", layer) == transformer_lens.utilities.get_act_name("z", layer)
    with torch.no_grad():
        _, ours = model.run_with_cache(tokens)
        _, theirs = bridge.run_with_cache(tokens)
    assert_same(ours["attn", layer], theirs["attn", layer], "pattern")
    assert_same(ours["resid_post", torch.tensor(-1)], ours["resid_post", 1], "negative tensor layer")
    from workbench.errors import UnknownHookError
    with pytest.raises(UnknownHookError, match="one integer"):
        workbench.utils.get_act_name("z", torch.tensor([0, 1]))
