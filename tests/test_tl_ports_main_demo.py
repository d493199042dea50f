"""TransformerLens's Main_Demo (demos/Main_Demo.ipynb), its GPT-2 cells ported by changing the import only.

Each test is a cell (or a few consecutive cells) of the notebook, its code as the notebook writes it, run once
on TransformerLens 4.x (the `bridge` fixture) and once on a workbench model with the same random GPT-2-shaped
weights (`model`), with `utils` / `FactoredMatrix` from the library under test. Every number the snippet computes
is compared to 1e-4. Changes to the notebook's text: `HookedTransformer.from_pretrained("gpt2-small")` is a
fixture, layer/head indices and sequence lengths fit the 2-layer, 4-head, 64-position model, and plotting calls
are replaced by returning what they would plot. The text-generation cell runs on the bundled model.

The cells were re-typed after the notebook, not copied from its source: checking them line by line
against it is still open (issue 14)."""

from functools import partial

import einops
import torch
from jaxtyping import Float

import workbench

from tl_port import run_both
HookPoint = object  # only an annotation in the notebook






model_description_text = """## Loading Models

HookedTransformer comes loaded with >40 open source GPT-style models. You can load any of them in with `HookedTransformer.from_pretrained(MODEL_NAME)`. See my explainer for documentation of all supported models, and this table for hyper-parameters and the name used to load them. Each model is loaded into the consistent HookedTransformer architecture, designed to be clean, consistent and interpretability-friendly.

For this demo notebook we'll look at GPT-2 Small, an 80M parameter model. To try the model the model out, let's find the loss on this paragraph!"""
model_description_text = model_description_text[:200]  # this model has 64 positions (GPT-2's 1024 fit all)


def test_loss_on_a_paragraph(bridge, model):
    def snippet(model, lib):
        loss = model(model_description_text, return_type="loss")
        print("Model loss:", loss)
        return {"loss": loss}

    run_both(snippet, bridge, model)


gpt2_text = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning on taskspecific datasets."


def test_run_with_cache_and_attention_pattern(bridge, model):
    def snippet(model, lib):
        gpt2_tokens = model.to_tokens(gpt2_text)
        print(gpt2_tokens.device)
        gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True)
        print(model)
        attention_pattern = gpt2_cache["pattern", 0, "attn"]
        print(attention_pattern.shape)
        gpt2_str_tokens = model.to_str_tokens(gpt2_text)
        return {
            "tokens": gpt2_tokens, "logits": gpt2_logits, "pattern": attention_pattern,
            "pattern_full_name": gpt2_cache["blocks.0.attn.hook_pattern"], "str_tokens": gpt2_str_tokens,
            "resid_post_last": gpt2_cache["resid_post", -1], "ln_scale": gpt2_cache["scale", 1, "ln2"],
            "q": gpt2_cache["q", 1], "mlp_post": gpt2_cache["post", 0],
        }

    ours, _ = run_both(snippet, bridge, model)
    assert ours["pattern"].shape == (model.cfg.n_heads, len(ours["str_tokens"]), len(ours["str_tokens"]))


def test_head_ablation_hook(bridge, model):
    layer_to_ablate = 0
    head_index_to_ablate = 3  # the notebook ablates L0H8; this model has 4 heads

    def snippet(model, lib):
        utils = lib.utils
        gpt2_tokens = model.to_tokens(gpt2_text)
        shapes = []

        # We define a head ablation hook
        # The type annotations are NOT necessary, they're just a useful guide to the reader
        #
        def head_ablation_hook(
            value: Float[torch.Tensor, "batch pos head_index d_head"],
            hook: HookPoint
        ) -> Float[torch.Tensor, "batch pos head_index d_head"]:
            print(f"Shape of the value tensor: {value.shape}")
            shapes.append(tuple(value.shape))
            value[:, :, head_index_to_ablate, :] = 0.
            return value

        original_loss = model(gpt2_tokens, return_type="loss")
        ablated_loss = model.run_with_hooks(
            gpt2_tokens,
            return_type="loss",
            fwd_hooks=[(
                utils.get_act_name("v", layer_to_ablate),
                head_ablation_hook
                )]
            )
        print(f"Original Loss: {original_loss.item():.3f}")
        print(f"Ablated Loss: {ablated_loss.item():.3f}")
        return {"original": original_loss, "ablated": ablated_loss, "shapes": shapes}

    ours, _ = run_both(snippet, bridge, model)
    assert ours["original"] != ours["ablated"]  # the ablation did something


clean_prompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
corrupted_prompt = "After John and Mary went to the store, John gave a bottle of milk to"


def test_activation_patching_by_hand(bridge, model):
    def snippet(model, lib):
        utils = lib.utils
        clean_tokens = model.to_tokens(clean_prompt)
        corrupted_tokens = model.to_tokens(corrupted_prompt)

        def logits_to_logit_diff(logits, correct_answer=" John", incorrect_answer=" Mary"):
            # model.to_single_token maps a string value of a single token to the token index for that token
            # If the string is not a single token, it raises an error.
            correct_index = model.to_single_token(correct_answer)
            incorrect_index = model.to_single_token(incorrect_answer)
            return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

        # We run on the clean prompt with the cache so we store activations to patch in later.
        clean_logits, clean_cache = model.run_with_cache(clean_tokens)
        clean_logit_diff = logits_to_logit_diff(clean_logits)
        print(f"Clean logit difference: {clean_logit_diff.item():.3f}")

        # We don't need to cache on the corrupted prompt.
        corrupted_logits = model(corrupted_tokens)
        corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
        print(f"Corrupted logit difference: {corrupted_logit_diff.item():.3f}")

        # We define a residual stream patching hook
        # We choose to act on the residual stream at the start of the layer, so we call it resid_pre
        # The type annotations are a guide to the reader and are not necessary
        def residual_stream_patching_hook(
            resid_pre: Float[torch.Tensor, "batch pos d_model"],
            hook: HookPoint,
            position: int
        ) -> Float[torch.Tensor, "batch pos d_model"]:
            # Each HookPoint has a name attribute giving the name of the hook.
            clean_resid_pre = clean_cache[hook.name]
            resid_pre[:, position, :] = clean_resid_pre[:, position, :]
            return resid_pre

        # We make a tensor to store the results for each patching run. We put it on the model's device to avoid needing to move things between the GPU and CPU, which can be slow.
        num_positions = len(clean_tokens[0])
        ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)

        for layer in range(model.cfg.n_layers):
            for position in range(num_positions):
                # Use functools.partial to create a temporary hook function with the position fixed
                temp_hook_fn = partial(residual_stream_patching_hook, position=position)
                # Run the model with the patching hook
                patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
                    (utils.get_act_name("resid_pre", layer), temp_hook_fn)
                ])
                # Calculate the logit difference
                patched_logit_diff = logits_to_logit_diff(patched_logits).detach()
                # Store the result, normalizing by the clean and corrupted logit difference so it's between 0 and 1 (ish)
                ioi_patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff)/(clean_logit_diff - corrupted_logit_diff)
        return {"clean": clean_logit_diff, "corrupted": corrupted_logit_diff, "result": ioi_patching_result}

    ours, _ = run_both(snippet, bridge, model)
    # the prompts differ at one position only: patching it into layer 0's input restores the clean run (1.0)
    differ = (model.to_tokens(clean_prompt) != model.to_tokens(corrupted_prompt))[0].nonzero().item()
    assert abs(ours["result"][0, differ].item() - 1.0) < 1e-4


def test_induction_scores_with_a_name_filter_hook(bridge, model):
    def snippet(model, lib):
        torch.manual_seed(0)
        batch_size = 10
        seq_len = 30  # the notebook's 50 repeated twice is longer than this model's 64 positions
        size = (batch_size, seq_len)
        input_tensor = torch.randint(1000, 10000, size)

        random_tokens = input_tensor.to(model.cfg.device)
        repeated_tokens = einops.repeat(random_tokens, "batch seq_len -> batch (2 seq_len)")
        repeated_logits = model(repeated_tokens)
        correct_log_probs = model.loss_fn(repeated_logits, repeated_tokens, per_token=True)
        loss_by_position = einops.reduce(correct_log_probs, "batch position -> position", "mean")

        # We make a tensor to store the induction score for each head. We put it on the model's device to avoid needing to move things between the GPU and CPU, which can be slow.
        induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

        def induction_score_hook(
            pattern: Float[torch.Tensor, "batch head_index dest_pos source_pos"],
            hook: HookPoint,
        ):
            # We take the diagonal of attention paid from each destination position to source positions seq_len-1 tokens back
            # (This only has entries for tokens with index>=seq_len)
            induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1-seq_len)
            # Get an average score per head
            induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
            # Store the result.
            induction_score_store[hook.layer(), :] = induction_score

        # We make a boolean filter on activation names, that's true only on attention pattern names.
        pattern_hook_names_filter = lambda name: name.endswith("pattern")

        model.run_with_hooks(
            repeated_tokens,
            return_type=None, # For efficiency, we don't need to calculate the logits
            fwd_hooks=[(
                pattern_hook_names_filter,
                induction_score_hook
            )]
        )
        return {"loss_by_position": loss_by_position, "induction_scores": induction_score_store}

    ours, _ = run_both(snippet, bridge, model)
    assert (ours["induction_scores"] > 0).all()


def test_tokenization_cells(bridge, model):
    def snippet(model, lib):
        example_text = "The first thing you need to figure out is *how* things are tokenized. `model.to_str_tokens` splits a string into the tokens *as a list of substrings*, and so lets you explore what the text looks like. To demonstrate this, let's use it on this paragraph."
        example_text = example_text[:150]  # to fit 64 positions: TransformerLens truncates, workbench refuses
        example_text_str_tokens = model.to_str_tokens(example_text)
        print(example_text_str_tokens)
        example_text_tokens = model.to_tokens(example_text)
        print(example_text_tokens)
        example_multi_text = ["The cat sat on the mat.", "The cat sat on the mat really hard."]
        example_multi_text_tokens = model.to_tokens(example_multi_text)
        print(example_multi_text_tokens)
        cat_text = "The cat sat on the mat."
        cat_logits = model(cat_text)
        cat_probs = cat_logits.softmax(dim=-1)
        print(f"Probability tensor shape [batch, position, d_vocab] == {cat_probs.shape}")
        capital_the_token_index = model.to_single_token(" The")
        print(f"| The| probability: {cat_probs[0, -1, capital_the_token_index].item():.2%}")
        print(f"Token 256 - the most common pair of ASCII characters: |{model.to_string(256)}|")
        # Squeeze means to remove dimensions of length 1.
        # Here, that removes the dummy first dimension of the rank 2 tensor and returns a rank 1 tensor and a string
        print(model.to_string(example_text_tokens[:, 1:10]))
        print("With BOS:", model.cfg.default_prepend_bos, model.to_tokens("Ralph"))
        return {
            "str_tokens": example_text_str_tokens, "tokens": example_text_tokens,
            "multi_tokens": example_multi_text_tokens, "cat_probs": cat_probs,
            "the_prob": cat_probs[0, -1, capital_the_token_index].item(), "token_256": model.to_string(256),
            "string": model.to_string(example_text_tokens[:, 1:10]),
            "ralph": model.to_str_tokens("Ralph"), "ralph_space": model.to_str_tokens(" Ralph"),
            "ralph_no_bos": model.to_str_tokens(" Ralph", prepend_bos=False),
            "ralph_lower": model.to_str_tokens(" ralph"), "ralph_upper": model.to_str_tokens("ralph"),
            "bos_default": model.cfg.default_prepend_bos,
            "no_bos_tokens": model.to_tokens("Ralph", prepend_bos=False),
            "position": model.get_token_position(" cat", cat_text),
        }

    run_both(snippet, bridge, model)


def test_factored_matrix_cells(bridge, model):
    def snippet(model, lib):
        FactoredMatrix = lib.FactoredMatrix
        torch.manual_seed(0)
        A = torch.randn(5, 2)
        B = torch.randn(2, 5)
        AB = A @ B
        AB_factor = FactoredMatrix(A, B)
        print("Norms:")
        print(AB.norm())
        print(AB_factor.norm())

        print(f"Right dim: {AB_factor.rdim}, Left dim: {AB_factor.ldim}, Hidden dim: {AB_factor.mdim}")
        print("Eigenvalues:")
        print(torch.linalg.eig(AB).eigenvalues)
        print(AB_factor.eigenvalues)
        print()
        print("Singular Values:")
        print(torch.linalg.svd(AB).S)
        print(AB_factor.S)
        print("Full SVD:")
        print(AB_factor.svd())
        C = torch.randn(5, 300)
        ABC = AB @ C
        ABC_factor = AB_factor @ C
        print("Unfactored:", ABC.shape, ABC.norm())
        print("Factored:", ABC_factor.shape, ABC_factor.norm())
        print(f"Right dim: {ABC_factor.rdim}, Left dim: {ABC_factor.ldim}, Hidden dim: {ABC_factor.mdim}")
        AB_unfactored = AB_factor.AB
        print(torch.isclose(AB_unfactored, AB).all())
        U, S, V = AB_factor.svd()
        return {
            "norm": AB_factor.norm(), "dims": (AB_factor.rdim, AB_factor.ldim, AB_factor.mdim),
            "eig": AB_factor.eigenvalues, "S": AB_factor.S, "USV": U @ torch.diag(S) @ V.T,
            "ABC_norm": ABC_factor.norm(), "ABC_shape": tuple(ABC_factor.shape),
            "ABC_dims": (ABC_factor.rdim, ABC_factor.ldim, ABC_factor.mdim), "AB": AB_unfactored,
        }

    run_both(snippet, bridge, model)


def test_ov_circuit_cells(bridge, model):
    def snippet(model, lib):
        OV_circuit_all_heads = model.OV
        print(OV_circuit_all_heads)
        OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
        print(OV_circuit_all_heads_eigenvalues.shape)
        print(OV_circuit_all_heads_eigenvalues.dtype)
        OV_copying_score = OV_circuit_all_heads_eigenvalues.sum(dim=-1).real / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1)
        scatter_x = OV_circuit_all_heads_eigenvalues[-1, 3].real  # the notebook plots L11H5
        scatter_y = OV_circuit_all_heads_eigenvalues[-1, 3].imag

        full_OV_circuit = model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U
        print(full_OV_circuit)
        full_OV_circuit_eigenvalues = full_OV_circuit.eigenvalues
        print(full_OV_circuit_eigenvalues.shape)
        print(full_OV_circuit_eigenvalues.dtype)
        full_OV_copying_score = full_OV_circuit_eigenvalues.sum(dim=-1).real / full_OV_circuit_eigenvalues.abs().sum(dim=-1)
        return {
            "shape": tuple(OV_circuit_all_heads.shape), "copying": OV_copying_score, "x": scatter_x, "y": scatter_y,
            "full_shape": tuple(full_OV_circuit.shape), "full_copying": full_OV_copying_score,
            "full_norm": full_OV_circuit.norm(), "weights_shapes": [tuple(model.blocks[0].attn.W_Q.shape), tuple(model.W_Q.shape)],
        }

    run_both(snippet, bridge, model)


def test_generate_on_the_bundled_model():
    """The notebook's generation cell; the bundled model, not TransformerLens: a string comes back, it starts with
    the prompt, and two greedy calls give the same text."""
    model = workbench.load_model("shakespeare-2l")
    with torch.no_grad():
        output = model.generate("ROMEO:\nWhat light through yonder", max_new_tokens=20, temperature=0.7)
        greedy = [model.generate("ROMEO:\nWhat light through yonder", max_new_tokens=20, do_sample=False) for _ in range(2)]
    assert isinstance(output, str) and output.startswith("ROMEO:\nWhat light through yonder")
    assert len(model.to_str_tokens(output, prepend_bos=False)) > len(model.to_str_tokens("ROMEO:\nWhat light through yonder", prepend_bos=False))
    assert greedy[0] == greedy[1] and greedy[0].startswith("ROMEO:")


def test_names_filter_hooks_context_and_cache_helpers(bridge, model):
    """The hooks section's other forms: a names filter on run_with_cache, the `model.hooks` context manager,
    and the cache's helpers as the notebook's neighbouring cells call them."""
    def snippet(model, lib):
        utils = lib.utils
        gpt2_tokens = model.to_tokens(gpt2_text)
        logits, pattern_cache = model.run_with_cache(gpt2_tokens, names_filter=lambda name: name.endswith("pattern"))
        captured = []

        def store_resid(resid, hook):
            captured.append(resid.clone())

        with model.hooks(fwd_hooks=[(utils.get_act_name("resid_post", 0), store_resid)]):
            hooked_logits = model(gpt2_tokens)
        after = model(gpt2_tokens)
        _, cache = model.run_with_cache(gpt2_tokens)
        accumulated, labels = cache.accumulated_resid(return_labels=True, apply_ln=True)
        return {"keys": sorted(pattern_cache.keys()), "pattern": pattern_cache["pattern", 1],
                "captured": captured, "n_captured_after": len(captured), "hooked_logits": hooked_logits,
                "after": after, "accumulated": accumulated, "labels": labels,
                "decomposed": cache.decompose_resid(layer=1, mode="attn"),
                "head_results": cache.stack_head_results(layer=2, pos_slice=(2, 6))}

    run_both(snippet, bridge, model)
