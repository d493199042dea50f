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

Two runs compute this:

- `graph_forward`, with nothing removed: every input's residual materialised as its own tensor
  (`GraphRun.inputs`), for EAP to differentiate the metric by; many runs along a leading `cell`
  axis (EAP-IG's interpolation steps).
- `circuit_forward`, for circuits (removed = the edges outside the circuit) of a clean run whose
  removed edges carry the corrupted run's outputs (`reference_run` computes both runs once). Most of
  a circuit's run repeats one of the two: an input whose kept edges all come from nodes at their
  corrupted output reads exactly the corrupted run's residual (the removed edges carry corrupted
  outputs too), and an input whose edges are all kept from nodes at their clean output reads the
  clean run's. A node whose inputs all read one run has that run's output. So each (circuit, node)
  has a status, CORRUPTED, CLEAN or MIXED, and only MIXED nodes and inputs are computed: an input's
  residual as

      resid_d = corrupted resid_d + sum over kept edges (u, d) of (output_u - corrupted_u),

  the same sum as above, in which every node at CORRUPTED adds 0. Small circuits are almost all
  CORRUPTED, the full graph all CLEAN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.methods._resume import unembed
from workbench.methods.circuit.graph import CircuitGraph
from workbench.models import GPT
from workbench.models.attention import Attention

# A node's or input's status in a circuit's run; CORRUPTED and CLEAN index the `run` axis of `References`.
CORRUPTED, CLEAN, MIXED = 0, 1, 2


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
) -> GraphRun:
    """Run the model from input embeddings `embeds` (the input node's output, one per cell), every
    downstream input reading its own copy of the residual stream (differentiable). Logits are
    computed at positions `read` only (and token ids `vocab`, others 0)."""
    n_cell = embeds.shape[0]
    outs: list[Tensor] = [embeds[None]]
    inputs: list[Tensor] = []

    def copies(resid: Tensor, n: int) -> Float[Tensor, "downstream cell batch pos d_model"]:
        return einops.repeat(resid, "cell batch pos d_model -> downstream cell batch pos d_model", downstream=n)

    resid = embeds
    for l, block in enumerate(model.blocks):
        attn = block.attn
        x_heads = copies(resid, len(graph.head_inputs(l)))
        inputs.append(x_heads)
        normed = block.ln1(einops.rearrange(x_heads, "input cell batch pos d_model -> (input cell batch) pos d_model"))
        normed = einops.rearrange(normed, "(input cell batch) pos d_model -> input (cell batch) pos d_model",
                                  input=x_heads.shape[0], cell=n_cell)
        W, b = qkv_weights(attn)
        qkv = einops.einsum(normed, W, "input batch pos d_model, input d_model d_head -> input batch pos d_head")
        q, k, v = einops.rearrange(qkv + b[:, None, None], "(three head) batch pos d_head -> three batch pos head d_head",
                                   three=3)
        result = attn.head_results(attn.attend(q, k, v))
        heads = einops.rearrange(result, "(cell batch) pos head d_model -> head cell batch pos d_model", cell=n_cell)
        outs.append(heads)
        attn_out = einops.reduce(heads, "head cell batch pos d_model -> cell batch pos d_model", "sum") + attn.b_O
        x_mlp = copies(resid + attn_out, 1)
        inputs.append(x_mlp)
        mlp_out = block.mlp(block.ln2(einops.rearrange(x_mlp, "1 cell batch pos d_model -> (cell batch) pos d_model")))
        mlp_out = einops.rearrange(mlp_out, "(cell batch) pos d_model -> cell batch pos d_model", cell=n_cell)
        outs.append(mlp_out[None])
        resid = resid + attn_out + mlp_out
    x_final = copies(resid, 1)
    inputs.append(x_final)
    final = einops.rearrange(x_final[0][:, :, list(read)], "cell batch pos d_model -> (cell batch) pos d_model")
    logits = einops.rearrange(unembed(model, final, vocab), "(cell batch) pos d_vocab -> cell batch pos d_vocab",
                              cell=n_cell)
    return GraphRun(logits, inputs, torch.cat(outs))


def qkv_weights(attn: Attention) -> tuple[Float[Tensor, "input d_model d_head"], Float[Tensor, "input d_head"]]:
    """W_Q, W_K, W_V and their biases per head input of the block, in the graph's (three head) order."""
    W = einops.rearrange(torch.stack([attn.W_Q, attn.W_K, attn.W_V]),
                         "three head d_model d_head -> (three head) d_model d_head")
    b = einops.rearrange(torch.stack([attn.b_Q, attn.b_K, attn.b_V]), "three head d_head -> (three head) d_head")
    return W, b


# ---------------------------------------------------------------------- circuits
@dataclass
class References:
    """The corrupted and the clean run (`run` axis: CORRUPTED, CLEAN), with what a circuit's run reads
    from them: per block the residual its heads read (`pre`) and its MLP reads (`mid`) [run batch
    pos d_model] and every head input's projection (`qkv` [run input batch pos d_head], inputs in
    the graph's (three head) order); the final residual (`final`), every
    node's output (`outputs`) and the logits at the read positions, of token ids `vocab` (`logits`)."""

    pre: list[Float[Tensor, "run batch pos d_model"]]
    mid: list[Float[Tensor, "run batch pos d_model"]]
    qkv: list[Float[Tensor, "run input batch pos d_head"]]
    final: Float[Tensor, "run batch pos d_model"]
    outputs: Float[Tensor, "run upstream batch pos d_model"]
    logits: Float[Tensor, "run batch _ d_vocab"]
    read: list[int]
    vocab: Sequence[int] | None


def reference_run(
    model: GPT,
    corrupted: Float[Tensor, "batch pos d_model"],
    clean: Float[Tensor, "batch pos d_model"],
    *,
    read: Sequence[int],
    vocab: Sequence[int] | None = None,
) -> References:
    """The corrupted and the clean run from their input embeddings, in one plain forward (every
    input of a block reads the block's one residual stream), keeping what `circuit_forward` reads."""
    n_run = 2
    resid = einops.rearrange(torch.stack([corrupted, clean]), "run batch pos d_model -> (run batch) pos d_model")
    outs = [einops.rearrange(resid, "(run batch) pos d_model -> run 1 batch pos d_model", run=n_run)]
    pre, mid, qkv = [], [], []

    def runs(x: Tensor) -> Float[Tensor, "run batch pos d_model"]:
        return einops.rearrange(x, "(run batch) pos d_model -> run batch pos d_model", run=n_run)

    for block in model.blocks:
        attn = block.attn
        pre.append(runs(resid))
        q, k, v = attn.split_qkv(block.ln1(resid))
        qkv.append(einops.rearrange(torch.stack([q, k, v]), "three (run batch) pos head d_head -> run (three head) batch pos d_head",
                                    run=n_run))
        heads = attn.head_results(attn.attend(q, k, v))
        outs.append(einops.rearrange(heads, "(run batch) pos head d_model -> run head batch pos d_model", run=n_run))
        resid = resid + einops.reduce(heads, "batch pos head d_model -> batch pos d_model", "sum") + attn.b_O
        mid.append(runs(resid))
        mlp_out = block.mlp(block.ln2(resid))
        outs.append(runs(mlp_out)[:, None])
        resid = resid + mlp_out
    return References(pre=pre, mid=mid, qkv=qkv, final=runs(resid), outputs=torch.cat(outs, 1),
                      logits=runs(unembed(model, resid[:, list(read)], vocab)), read=list(read), vocab=vocab)


def circuit_forward(
    model: GPT,
    graph: CircuitGraph,
    references: References,
    kept: Bool[Tensor, "cell upstream downstream"],
) -> Float[Tensor, "cell batch _ d_vocab"]:
    """The logits (at the references' read positions and vocabulary) of each circuit's run: the clean
    run in which every edge not in `kept` carries its node's corrupted output (module docstring).
    Only the nodes and inputs that differ from both reference runs are computed."""
    circuits = _Circuits(graph, references, kept)
    for l, block in enumerate(model.blocks):
        qkv = _head_inputs(block, circuits, circuits.indices(graph.head_inputs(l)), references.pre[l], references.qkv[l])
        status = node_status(einops.rearrange(qkv.status, "cell (three head) -> cell head three", three=3))
        circuits.record(graph.head_node(l, 0), status, _head_outputs(block.attn, qkv.values, status, circuits.window))
        down = circuits.indices([graph.mlp_input(l)])
        status = circuits.input_status(down)
        i, cell = mixed(status)
        x = circuits.residuals(cell, down[i], references.mid[l][CORRUPTED])
        circuits.record(graph.mlp_node(l), status, per_pair(lambda x: block.mlp(block.ln2(x)), x))
    down = circuits.indices([graph.logits_input])
    status = circuits.input_status(down)[:, 0]
    logits = references.logits[status.clamp(max=CLEAN)]
    cell = (status == MIXED).nonzero().flatten()
    if len(cell):
        x = circuits.residuals(cell, down.expand(len(cell)), references.final[CORRUPTED], positions=references.read)
        logits[cell] = per_pair(lambda x: unembed(model, x, references.vocab), x)
    return logits


@dataclass
class _Projected:
    status: Int[Tensor, "cell input"]
    values: Float[Tensor, "cell input batch pos d_head"]


def _head_inputs(block, circuits: _Circuits, down: Int[Tensor, "input"], resid: Float[Tensor, "run batch pos d_model"],
                 qkv: Float[Tensor, "run input batch pos d_head"]) -> _Projected:
    """Each circuit's q, k, v of a block's heads (inputs `down`): the reference run's where the input
    reads one, else projected from the input's own residual."""
    status = circuits.input_status(down)
    values = qkv[status.clamp(max=CLEAN), torch.arange(len(down), device=down.device)]
    i, cell = mixed(status)
    if len(cell):
        normed = per_pair(block.ln1, circuits.residuals(cell, down[i], resid[CORRUPTED]))
        W, b = qkv_weights(block.attn)
        # one matmul per input (with that head's W_Q, W_K or W_V), over the circuits where it is MIXED
        values[cell, i, :, circuits.window] = grouped(normed, i, lambda j, x: einops.einsum(
            x, W[j], "pair batch pos d_model, d_model d_head -> pair batch pos d_head") + b[j])
    return _Projected(status, values)


def _head_outputs(attn: Attention, qkv: Float[Tensor, "cell input batch pos d_head"], status: Int[Tensor, "cell head"],
                  window: slice) -> Float[Tensor, "pair batch _ d_model"]:
    """The outputs (z W_O) at the `window` positions of the (circuit, head) pairs at MIXED, in (head, cell) order."""
    head, cell = mixed(status)
    batch, query_pos = qkv.shape[2], torch.arange(window.start, window.stop, device=qkv.device)
    if not len(cell):
        return qkv.new_empty(0, batch, len(query_pos), attn.W_O.shape[-1])
    qkv = einops.rearrange(qkv[:, :, :, : window.stop], "cell (three head) batch pos d_head -> cell head three batch pos d_head",
                           three=3)
    # each pair is a head of one attention call, with its own q, k, v
    q, k, v = einops.rearrange(qkv[cell, head], "pair three batch pos d_head -> three batch pos pair d_head")
    z = attn.attend(q[:, window], k, v, query_pos=einops.repeat(query_pos, "pos -> batch pos", batch=batch))
    z = einops.rearrange(z, "batch pos pair d_head -> pair batch pos d_head")
    return grouped(z, head, lambda h, z: einops.rearrange(
        attn.head_results(einops.rearrange(z, "pair batch pos d_head -> (pair batch) pos 1 d_head"), heads=head.new_tensor([h])),
        "(pair batch) pos 1 d_model -> pair batch pos d_model", batch=z.shape[1]))


def mixed(status: Int[Tensor, "cell item"]) -> tuple[Int[Tensor, "pair"], Int[Tensor, "pair"]]:
    """The (item, cell) pairs at MIXED, by item, then cell."""
    item, cell = (status.T == MIXED).nonzero(as_tuple=True)
    return item, cell


def grouped(x: Float[Tensor, "pair ..."], group: Int[Tensor, "pair"], fn) -> Tensor:
    """fn(g, x[group == g]) for each group g (`group` sorted), concatenated: one call per group (a
    matmul with the group's weights) instead of a copy of the weights per pair."""
    groups, counts = torch.unique_consecutive(group, return_counts=True)
    return torch.cat([fn(g, part) for g, part in zip(groups.tolist(), x.split(counts.tolist()))])


def per_pair(fn, x: Float[Tensor, "pair batch pos d_model"]) -> Float[Tensor, "pair batch pos _"]:
    """fn ([batch pos d_model] -> [batch pos _]) of each pair's prompts."""
    out = fn(einops.rearrange(x, "pair batch pos d_model -> (pair batch) pos d_model"))
    return einops.rearrange(out, "(pair batch) pos d -> pair batch pos d", batch=x.shape[1])


def node_status(inputs: Int[Tensor, "*node input"]) -> Int[Tensor, "*node"]:
    """A node's status from its inputs': CORRUPTED or CLEAN when they all are, else MIXED."""
    first = inputs[..., 0]
    return torch.where((inputs == first[..., None]).all(-1), first, MIXED)


class _Circuits:
    """Per circuit (cell): each node's status (`status` [cell upstream]) and its output's change from
    the corrupted run's (`change` [cell upstream batch pos d_model]: 0 at CORRUPTED, clean - corrupted
    at CLEAN, computed - corrupted at MIXED), filled in node order as the forward produces them.

    Only the `window` positions are computed, from the first where the clean and the corrupted input
    differ (every run is the same before it: attention is causal) to the last read one (no later
    position is read); `change` holds those positions."""

    def __init__(self, graph: CircuitGraph, references: References, kept: Tensor) -> None:
        self.graph, self.references = graph, references
        self.kept = kept & graph.allowed.to(kept.device)
        differs = (references.outputs[CLEAN, 0] != references.outputs[CORRUPTED, 0]).any(-1).any(0)  # [pos]
        last = max(references.read)
        first = int(differs.nonzero()[0]) if differs.any() else last
        self.window = slice(min(first, last), last + 1)
        outputs = references.outputs[..., self.window, :]
        self.corrupted_out = outputs[CORRUPTED]  # [upstream batch pos d_model]
        self.clean_change = outputs[CLEAN] - outputs[CORRUPTED]
        self.status = torch.full(kept.shape[:2], CORRUPTED, device=kept.device)
        self.change = outputs.new_empty(kept.shape[0], *outputs.shape[1:])  # each node's, set by `record`
        self.record(0, torch.full_like(self.status[:, :1], CLEAN), outputs.new_empty(0, *outputs.shape[2:]))

    def indices(self, down: Sequence[int]) -> Int[Tensor, "input"]:
        return torch.tensor(list(down), device=self.kept.device)

    def input_status(self, down: Int[Tensor, "input"]) -> Int[Tensor, "cell input"]:
        """CORRUPTED where no kept edge comes from a node off its corrupted output (the input reads the
        corrupted run's residual), CLEAN where every edge is kept and comes from a node at CLEAN, else MIXED."""
        n_up = self.graph.nodes_before(int(down[0]))
        kept = self.kept[:, :n_up][:, :, down]  # [cell upstream input]
        status = self.status[:, :n_up, None]
        changed = (kept & (status != CORRUPTED)).any(1)
        clean = (kept & (status == CLEAN)).all(1)
        return torch.where(changed, torch.where(clean, CLEAN, MIXED), CORRUPTED)

    def residuals(
        self,
        cell: Int[Tensor, "pair"],
        down: Int[Tensor, "pair"],
        corrupted: Float[Tensor, "batch pos d_model"],
        *,
        positions: Sequence[int] | None = None,
    ) -> Float[Tensor, "pair batch _ d_model"]:
        """The residual of input down[i] in circuit cell[i] at the window's positions
        (or at `positions`, which lie in it): the corrupted run's residual (`corrupted`, every position)
        plus the changes of the nodes it keeps edges from."""
        n_up = self.graph.nodes_before(int(down[0])) if len(down) else 0
        window = range(self.window.start, self.window.stop)
        positions = list(window if positions is None else positions)
        weights = self.kept[cell, :n_up, down].to(self.change.dtype)  # [pair upstream]
        corrupted = corrupted[:, positions]
        in_window = [window.index(p) for p in positions]
        summed = weights.new_empty(len(cell), corrupted.numel())
        # one dense matmul per circuit: its rows read its own nodes' changes (0 for those at CORRUPTED)
        order = torch.argsort(cell, stable=True)
        cells, counts = torch.unique_consecutive(cell[order], return_counts=True)
        for c, rows in zip(cells.tolist(), order.split(counts.tolist())):
            change = self.change[c, :n_up]
            change = change if len(positions) == change.shape[2] else change[:, :, in_window]
            summed[rows] = weights[rows] @ einops.rearrange(change, "upstream batch pos d_model -> upstream (batch pos d_model)")
        return corrupted + einops.rearrange(summed, "pair (batch pos d_model) -> pair batch pos d_model",
                                            batch=corrupted.shape[0], pos=corrupted.shape[1])

    def record(self, first: int, status: Int[Tensor, "cell node"], computed: Float[Tensor, "pair batch pos d_model"]) -> None:
        """Nodes first, first + 1, ... have these statuses; `computed`: the outputs of those at MIXED,
        in (node, cell) order (`mixed`)."""
        self.status[:, first : first + status.shape[1]] = status
        cell, i = (status == CORRUPTED).nonzero(as_tuple=True)
        self.change[cell, first + i] = 0
        cell, i = (status == CLEAN).nonzero(as_tuple=True)
        self.change[cell, first + i] = self.clean_change[first + i]
        i, cell = mixed(status)
        self.change[cell, first + i] = computed - self.corrupted_out[first + i]
