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
of a faithfulness curve). The corrections are summed sparsely (`_Terms`): per circuit over its kept
or its removed edges, whichever are fewer. With `removed` None nothing is patched: the clean forward, whose
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
    if removed is not None:
        terms = _Terms(graph, removed, corrupted, embeds)
        terms.produced(0, embeds[None])

    def patched(resid: Tensor, down: Sequence[int]) -> Float[Tensor, "downstream cell batch pos d_model"]:
        # resid [cell batch pos d_model] for each input in `down`, plus its removed edges' corrections.
        x = einops.repeat(resid, "cell batch pos d_model -> downstream cell batch pos d_model", downstream=len(down))
        return x if removed is None else x + terms.correction(down)

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
        if removed is not None:
            terms.produced(graph.head_node(l, 0), heads)
        attn_out = einops.reduce(heads, "head cell batch pos d_model -> cell batch pos d_model", "sum") + attn.b_O
        x_mlp = patched(resid + attn_out, [graph.mlp_input(l)])
        inputs.append(x_mlp)
        mlp_out = block.mlp(block.ln2(einops.rearrange(x_mlp, "1 cell batch pos d_model -> (cell batch) pos d_model")))
        mlp_out = einops.rearrange(mlp_out, "(cell batch) pos d_model -> cell batch pos d_model", cell=n_cell)
        outs.append(mlp_out[None])
        if removed is not None:
            terms.produced(graph.mlp_node(l), mlp_out[None])
        resid = resid + attn_out + mlp_out
    x_final = patched(resid, [graph.logits_input])
    inputs.append(x_final)
    final = einops.rearrange(x_final[0][:, :, list(read)], "cell batch pos d_model -> (cell batch) pos d_model")
    logits = einops.rearrange(unembed(model, final, vocab), "(cell batch) pos d_vocab -> cell batch pos d_vocab",
                              cell=n_cell)
    return GraphRun(logits, inputs, torch.cat(outs))


class _Terms:
    """The corrections sum_u removed[cell, u, d] (corrupted_u - current_u) of `graph_forward`, summed
    sparsely. Per cell, whichever is smaller is summed: the removed edges (resid + their terms) or the
    kept ones (resid + the sum over every node before d - the kept edges' terms); the same numbers as
    the dense sum, without touching every (node, input) pair: a circuit of k edges costs
    min(k, n_edges - k) vector additions instead of n_node x n_input."""

    def __init__(self, graph: CircuitGraph, removed: Tensor, corrupted: Tensor, like: Tensor) -> None:
        self.graph = graph
        allowed = graph.allowed.to(removed.device)
        removed = removed.bool() & allowed
        n_removed = removed.flatten(1).sum(1)
        self.keep_side = n_removed > len(graph) - n_removed  # [cell]: sum the kept edges' terms
        self.terms = torch.where(self.keep_side[:, None, None], allowed & ~removed, removed)  # [cell upstream downstream]
        self.corrupted = corrupted
        n_cell = removed.shape[0]
        self.diffs = like.new_empty(len(graph.upstream), n_cell, *like.shape[1:])  # corrupted - current, by node
        self.total = torch.zeros_like(like)  # running sum of diffs over the nodes produced so far
        self.n_done = 0

    def produced(self, first: int, outputs: Float[Tensor, "upstream cell batch pos d_model"]) -> None:
        """Nodes first, first + 1, ... have these outputs in this run."""
        diff = self.corrupted[first : first + len(outputs), None] - outputs
        self.diffs[first : first + len(outputs)] = diff
        self.total = self.total + diff.sum(0)
        self.n_done = first + len(outputs)

    def correction(self, down: Sequence[int]) -> Float[Tensor, "downstream cell batch pos d_model"]:
        n_up = self.graph.nodes_before(down[0])
        n_cell = self.total.shape[0]
        c, u, d = self.terms[:, :n_up][:, :, list(down)].nonzero(as_tuple=True)
        sign = torch.where(self.keep_side[c], -1.0, 1.0).to(self.diffs.dtype)
        flat = einops.rearrange(self.diffs[:n_up], "upstream cell batch pos d_model -> (upstream cell) (batch pos d_model)")
        pick = torch.sparse_coo_tensor(torch.stack([d * n_cell + c, u * n_cell + c]), sign,
                                       (len(down) * n_cell, n_up * n_cell), check_invariants=False)
        summed = torch.sparse.mm(pick.float(), flat.float()).to(flat.dtype)
        out = einops.rearrange(summed, "(downstream cell) (batch pos d_model) -> downstream cell batch pos d_model",
                               cell=n_cell, batch=self.total.shape[1], pos=self.total.shape[2])
        # the kept-edges side starts from the sum over every node before d (its corrupted residual)
        total = self.total if n_up == self.n_done else self.diffs[:n_up].sum(0)
        return out + self.keep_side.to(out.dtype)[None, :, None, None, None] * total[None]
