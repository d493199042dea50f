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

  the same sum as above, in which every node at CORRUPTED adds 0 (`circuit_status` finds the
  statuses from the edges alone, before any maths). Small circuits are almost all CORRUPTED, the
  full graph all CLEAN. Positions before the first one where the clean and the corrupted input
  differ are the same in every run (attention is causal), and none after the last read one is
  read: only the positions between are computed.
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
    H = graph.n_head
    outs: list[Tensor] = [embeds[None]]
    inputs: list[Tensor] = []

    def copies(resid: Tensor, n: int) -> Float[Tensor, "downstream cell batch pos d_model"]:
        return einops.repeat(resid, "cell batch pos d_model -> downstream cell batch pos d_model", downstream=n)

    resid = embeds
    for l, block in enumerate(model.blocks):
        attn = block.attn
        x_heads = copies(resid, len(graph.head_inputs(l)))
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


def qkv_weight(attn: Attention, input: int) -> tuple[Float[Tensor, "d_model d_head"], Float[Tensor, "d_head"]]:
    """W_Q, W_K or W_V of one head input of the block (index in the graph's (three head) order), and
    its bias: views of the fused weights, no copies."""
    three, head = divmod(input, attn.n_head)
    return (attn.W_Q, attn.W_K, attn.W_V)[three][head], (attn.b_Q, attn.b_K, attn.b_V)[three][head]


# ---------------------------------------------------------------------- circuits
@dataclass
class References:
    """The corrupted and the clean run (`run` axis: CORRUPTED, CLEAN), with what a circuit's run reads
    from them: per block the residual its heads read (`pre`) and its MLP reads (`mid`) [run batch
    pos d_model] and every head input's projection (`qkv` [run input batch pos d_head], inputs in
    the graph's (three head) order); the final residual (`final`), every node's output (`outputs`)
    and the logits at the positions `read`, of token ids `vocab` (`logits`)."""

    pre: list[Float[Tensor, "run batch pos d_model"]]
    mid: list[Float[Tensor, "run batch pos d_model"]]
    qkv: list[Float[Tensor, "run downstream batch pos d_head"]]
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
    Only the nodes and inputs at MIXED (`circuit_status`) are computed."""
    circuits = _Circuits(graph, references, kept)
    for l, block in enumerate(model.blocks):
        qkv = _head_inputs(block, circuits, list(graph.head_inputs(l)), references.pre[l], references.qkv[l])
        heads = slice(graph.head_node(l, 0), graph.mlp_node(l))
        circuits.record(heads, _head_outputs(block.attn, qkv, circuits.status[:, heads], circuits.window))
        x = circuits.residuals(graph.mlp_input(l), references.mid[l][CORRUPTED])
        circuits.record(slice(graph.mlp_node(l), graph.mlp_node(l) + 1), per_pair(lambda x: block.mlp(block.ln2(x)), x))
    status = circuits.inputs[:, graph.logits_input]
    logits = references.logits[status.clamp(max=CLEAN)]
    x = circuits.residuals(graph.logits_input, references.final[CORRUPTED], positions=references.read)
    logits[status == MIXED] = per_pair(lambda x: unembed(model, x, references.vocab), x)
    return logits


def circuit_status(
    graph: CircuitGraph, kept: Bool[Tensor, "cell upstream downstream"]
) -> tuple[Int[Tensor, "cell upstream"], Int[Tensor, "cell downstream"]]:
    """Each circuit's node and input statuses (module docstring), in forward order. An input is
    CORRUPTED when none of its kept edges comes from a node off CORRUPTED (it reads the corrupted
    run's residual), CLEAN when all its edges are kept and come from nodes at CLEAN; a node is
    CORRUPTED or CLEAN when all its inputs are; the rest is MIXED. The input node is CLEAN (a
    circuit's run is the clean run)."""
    nodes = torch.full(kept.shape[:2], CORRUPTED, device=kept.device)
    nodes[:, 0] = CLEAN
    inputs = torch.full((kept.shape[0], kept.shape[2]), CORRUPTED, device=kept.device)

    def read(down: list[int]) -> Int[Tensor, "cell downstream"]:
        n_up = graph.nodes_before(down[0])  # the same for every input of the list
        edges, status = kept[:, :n_up, down], nodes[:, :n_up, None]
        changed = (edges & (status != CORRUPTED)).any(1)
        clean = (edges & (status == CLEAN)).all(1)
        inputs[:, down] = torch.where(changed, torch.where(clean, CLEAN, MIXED), CORRUPTED)
        return inputs[:, down]

    for l in range(graph.n_layer):
        heads = read(list(graph.head_inputs(l)))
        nodes[:, graph.head_node(l, 0) : graph.mlp_node(l)] = node_status(
            einops.rearrange(heads, "cell (three head) -> cell head three", three=3))
        nodes[:, graph.mlp_node(l)] = read([graph.mlp_input(l)])[:, 0]
    read([graph.logits_input])
    return nodes, inputs


def node_status(inputs: Int[Tensor, "*upstream downstream"]) -> Int[Tensor, "*upstream"]:
    """A node's status from its inputs': CORRUPTED or CLEAN when they all are, else MIXED."""
    first = inputs[..., 0]
    return torch.where((inputs == first[..., None]).all(-1), first, MIXED)


def _head_inputs(block, circuits: _Circuits, down: list[int], resid: Float[Tensor, "run batch pos d_model"],
                 qkv: Float[Tensor, "run downstream batch pos d_head"]) -> Float[Tensor, "cell downstream batch pos d_head"]:
    """Each circuit's q, k, v of a block's heads (inputs `down`): the reference run's where the input
    reads one, else projected from the input's own residual (at the window's positions)."""
    status = circuits.inputs[:, down]
    values = qkv[status.clamp(max=CLEAN), torch.arange(len(down), device=status.device)]
    i, cell = mixed(status)

    def project(j: int, x: Float[Tensor, "pair batch pos d_model"]) -> Float[Tensor, "pair batch pos d_head"]:
        W, b = qkv_weight(block.attn, j)
        return einops.einsum(x, W, "pair batch pos d_model, d_model d_head -> pair batch pos d_head") + b

    if len(cell):
        normed = per_pair(block.ln1, circuits.residuals(down, resid[CORRUPTED]))
        # one matmul per input (that head's W_Q, W_K or W_V), over the circuits where the input is MIXED
        values[cell, i, :, circuits.window] = grouped(normed, i, project)
    return values


def _head_outputs(attn: Attention, qkv: Float[Tensor, "cell downstream batch pos d_head"], status: Int[Tensor, "cell head"],
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


def mixed(status: Int[Tensor, "cell _"]) -> tuple[Int[Tensor, "pair"], Int[Tensor, "pair"]]:
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
    return einops.rearrange(out, "(pair batch) ... -> pair batch ...", batch=x.shape[1])


class _Circuits:
    """The circuits' statuses (`status` [cell upstream], `inputs` [cell downstream]; `circuit_status`)
    and each node's change from its corrupted output, kept for the (circuit, node) pairs off
    CORRUPTED only (the others' is 0): `change` [row batch pos d_model], rows by circuit, then node
    (`node_of` [row]; `first_row` [cell]), clean - corrupted at CLEAN, computed - corrupted at MIXED
    (set by `record` as the forward computes them).

    Only the `window` positions are computed, from the first where the clean and the corrupted input
    differ (every run is the same before it: attention is causal), or the first read one if earlier,
    to the last read one (no later position is read); `change` holds those positions."""

    def __init__(self, graph: CircuitGraph, references: References, kept: Tensor) -> None:
        self.graph = graph
        self.kept = kept & graph.allowed.to(kept.device)
        self.status, self.inputs = circuit_status(graph, self.kept)
        differs = (references.outputs[CLEAN, 0] != references.outputs[CORRUPTED, 0]).any(-1).any(0)  # [pos]
        first = int(differs.nonzero()[0]) if differs.any() else len(differs)
        self.window = slice(min(first, *references.read), max(references.read) + 1)
        outputs = references.outputs[..., self.window, :]
        self.corrupted_out = outputs[CORRUPTED]  # [upstream batch pos d_model]
        changed = self.status != CORRUPTED
        cell, self.node_of = changed.nonzero(as_tuple=True)
        self.row = torch.full_like(self.status, -1)
        self.row[cell, self.node_of] = torch.arange(len(cell), device=cell.device)
        self.n_before = torch.cumsum(changed, 1)  # [cell upstream]: rows of the circuit's nodes up to this one
        self.first_row = self.n_before[:, -1].cumsum(0) - self.n_before[:, -1]
        self.change = outputs.new_empty(len(cell), *outputs.shape[2:])
        clean = self.status[cell, self.node_of] == CLEAN
        self.change[clean] = outputs[CLEAN, self.node_of[clean]] - self.corrupted_out[self.node_of[clean]]

    def residuals(
        self, down: int | list[int], corrupted: Float[Tensor, "batch pos d_model"], *, positions: Sequence[int] | None = None
    ) -> Float[Tensor, "pair batch _ d_model"]:
        """The residual of each (input, circuit) pair at MIXED of inputs `down` (which read the same
        nodes), in `mixed` order, at the window's positions (or at `positions`, which lie in it):
        the corrupted run's residual (`corrupted`, every position) plus the changes of the nodes the
        input keeps edges from."""
        down = [down] if isinstance(down, int) else down
        i, cell = mixed(self.inputs[:, down])
        n_up = self.graph.nodes_before(down[0])
        window = range(self.window.start, self.window.stop)
        positions = list(window if positions is None else positions)
        in_window = None if positions == list(window) else [window.index(p) for p in positions]
        corrupted = corrupted[:, positions]
        summed = corrupted.new_empty(len(cell), corrupted.numel())
        down = torch.tensor(down, device=cell.device)[i]
        # one matmul per circuit, over its nodes off CORRUPTED
        order = torch.argsort(cell, stable=True)
        cells, counts = torch.unique_consecutive(cell[order], return_counts=True)
        for c, pairs in zip(cells.tolist(), order.split(counts.tolist())):
            rows = slice(int(self.first_row[c]), int(self.first_row[c] + self.n_before[c, n_up - 1]))
            weights = self.kept[c, self.node_of[rows]][:, down[pairs]].T.to(summed.dtype)  # [pair row]
            change = self.change[rows] if in_window is None else self.change[rows][:, :, in_window]
            summed[pairs] = weights @ einops.rearrange(change, "row batch pos d_model -> row (batch pos d_model)")
        return corrupted + einops.rearrange(summed, "pair (batch pos d_model) -> pair batch pos d_model",
                                            batch=corrupted.shape[0], pos=corrupted.shape[1])

    def record(self, nodes: slice, computed: Float[Tensor, "pair batch pos d_model"]) -> None:
        """The outputs of `nodes` computed for the circuits where they are MIXED, in `mixed` order."""
        i, cell = mixed(self.status[:, nodes])
        node = nodes.start + i
        self.change[self.row[cell, node]] = computed - self.corrupted_out[node]
