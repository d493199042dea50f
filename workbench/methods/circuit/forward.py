"""The graph forward: the model run with every downstream input reading its own residual stream.

A plain forward feeds block l's q, k and v inputs and (after attention) its MLP one shared residual
stream. Here each downstream input d of the `CircuitGraph` reads

    resid_d = (sum of the outputs of the nodes before d, as computed in this run, plus biases)
              + sum_u removed[cell, u, d] * (corrupted_u - current_u)

so an edge (u, d) with removed = 1 carries node u's corrupted output into d alone, and every other
reader of u keeps this run's output. Each input's LayerNorm is computed from its own residual (the
q, k, v inputs of one head, and of different heads, may differ), and every head's q, k and v are
projected from their own normalised input with that head's W_Q, W_K, W_V; the attention itself is
the model's (`Attention.attend`, `head_results`), as are the MLP and the unembedding.

Many runs go in one forward along a leading `cell` axis (interpolation steps of EAP-IG, circuits
of a faithfulness curve). With `removed` None nothing is patched: the clean forward, whose
per-input residuals (`GraphRun.inputs`) are what EAP differentiates the metric by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from workbench.methods._resume import unembed
from workbench.methods.circuit.graph import CircuitGraph
from workbench.models import GPT


@dataclass
class GraphRun:
    """`logits` [cell batch pos d_vocab] at the metric's read positions; `inputs`: every downstream
    input's residual stream, in the graph's order, as a list of [downstream cell batch pos d_model]
    pieces (one per block's heads, its MLP, the logits) to differentiate by; `outputs` [upstream
    cell batch pos d_model]: every node's output in this run."""

    logits: Float[Tensor, "cell batch _ d_vocab"]
    inputs: list[Tensor]
    outputs: Float[Tensor, "upstream cell batch pos d_model"]


def graph_forward(
    model: GPT,
    graph: CircuitGraph,
    embeds: Float[Tensor, "cell batch pos d_model"],
    *,
    read: Sequence[int],
    vocab: Sequence[int] | None = None,
    corrupted: Float[Tensor, "upstream batch pos d_model"] | None = None,
    removed: Float[Tensor, "cell upstream downstream"] | None = None,
) -> GraphRun:
    """Run the model from input embeddings `embeds` (the input node's output, one per cell),
    with the edges in `removed` (1 = the edge carries the node's `corrupted` output) patched.
    Logits are computed at positions `read` only (and token ids `vocab`, others 0)."""
    n_cell = embeds.shape[0]
    H = graph.n_head
    outs: list[Tensor] = [embeds[None]]
    inputs: list[Tensor] = []

    def patched(resid: Tensor, down: Sequence[int]) -> Float[Tensor, "downstream cell batch pos d_model"]:
        # resid [cell batch pos d_model] for each input in `down`, plus its removed edges' corrections.
        x = einops.repeat(resid, "cell batch pos d_model -> downstream cell batch pos d_model", downstream=len(down))
        if removed is None:
            return x
        n_up = graph.nodes_before(down[0])
        current = torch.cat(outs)[:n_up]
        diff = corrupted[:n_up, None] - current
        mask = removed[:, :n_up][:, :, list(down)].to(diff.dtype)
        return x + einops.einsum(mask, diff, "cell upstream downstream, upstream cell batch pos d_model -> "
                                             "downstream cell batch pos d_model")

    resid = embeds
    for l, block in enumerate(model.blocks):
        attn = block.attn
        x_heads = patched(resid, graph.head_inputs(l))
        inputs.append(x_heads)
        normed = block.ln1(einops.rearrange(x_heads, "downstream cell batch pos d_model -> (downstream cell batch) pos d_model"))
        normed = einops.rearrange(normed, "(three head cell batch) pos d_model -> three head (cell batch) pos d_model",
                                  three=3, head=H, cell=n_cell)
        W = torch.stack([attn.W_Q, attn.W_K, attn.W_V])
        b = torch.stack([attn.b_Q, attn.b_K, attn.b_V])
        qkv = einops.einsum(normed, W, "three head batch pos d_model, three head d_model d_head -> three batch pos head d_head")
        q, k, v = qkv + b[:, None, None]
        result = attn.head_results(attn.attend(q, k, v))
        heads = einops.rearrange(result, "(cell batch) pos head d_model -> head cell batch pos d_model", cell=n_cell)
        outs.append(heads)
        attn_out = einops.reduce(heads, "head cell batch pos d_model -> cell batch pos d_model", "sum") + attn.b_O
        x_mlp = patched(resid + attn_out, [graph.mlp_input(l)])
        inputs.append(x_mlp)
        mlp_out = block.mlp(block.ln2(einops.rearrange(x_mlp, "1 cell batch pos d_model -> (cell batch) pos d_model")))
        mlp_out = einops.rearrange(mlp_out, "(cell batch) pos d_model -> cell batch pos d_model", cell=n_cell)
        outs.append(mlp_out[None])
        resid = resid + attn_out + mlp_out
    x_final = patched(resid, [graph.logits_input])
    inputs.append(x_final)
    final = einops.rearrange(x_final[0][:, :, list(read)], "cell batch pos d_model -> (cell batch) pos d_model")
    logits = einops.rearrange(unembed(model, final, vocab), "(cell batch) pos d_vocab -> cell batch pos d_vocab",
                              cell=n_cell)
    return GraphRun(logits, inputs, torch.cat(outs))
