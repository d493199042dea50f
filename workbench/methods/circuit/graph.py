"""The circuit graph: which component outputs each component input reads.

Nodes (`upstream`) are what writes to the residual stream: the input (token plus position
embeddings), every attention head's output (z W_O, "L{layer}H{head}") and every MLP's output
("MLP{layer}"). Inputs (`downstream`) are what reads it: each head's query, key and value inputs
("L{layer}H{head}.q", ".k", ".v"), each MLP's input ("MLP{layer}") and the logits ("logits"). An edge
is (upstream node, downstream input) where the node writes before the input reads: a head in block l
reads the input and every head and MLP of blocks < l; an MLP in block l reads those and block l's
heads; the logits read everything. Each downstream input's residual stream is the sum of its
upstream nodes' outputs plus the biases that belong to no node (every b_O, which is the same in
every run); an MLP's output includes its b_out. So an edge's intervention is exact: swapping one
upstream term of one downstream input changes that input's residual by (new - old) upstream output,
and its LayerNorm is recomputed for that input alone.

For GPT-2 124M (12 layers, 12 heads) the graph has 157 nodes, 445 inputs and 32,491 edges.
Edges are numbered by downstream input (forward order), then upstream node (forward order).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks import ActivationCache, act_name
from workbench.methods._checks import shown

QKV = ("q", "k", "v")
INPUT, LOGITS = "input", "logits"


@dataclass(frozen=True)
class CircuitGraph:
    """The edges of a model of `n_layer` blocks with `n_head` heads each (see the module docstring).

    `upstream` / `downstream`: the node and input labels in forward order; `edge_upstream`,
    `edge_downstream` [edge]: each edge's node and input index; `edges`: labels "L0H1->L1H0.k"."""

    n_layer: int
    n_head: int
    upstream: list[str] = field(init=False)
    downstream: list[str] = field(init=False)
    edges: list[str] = field(init=False, repr=False)
    edge_upstream: Int[Tensor, "edge"] = field(init=False, repr=False)
    edge_downstream: Int[Tensor, "edge"] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        L, H = self.n_layer, self.n_head
        up = [INPUT] + [lbl for l in range(L) for lbl in [f"L{l}H{h}" for h in range(H)] + [f"MLP{l}"]]
        down = [lbl for l in range(L) for lbl in [f"L{l}H{h}.{x}" for x in QKV for h in range(H)] + [f"MLP{l}"]]
        down.append(LOGITS)
        set_ = object.__setattr__  # frozen: the derived fields are set once, here
        set_(self, "upstream", up)
        set_(self, "downstream", down)
        allowed = self.allowed
        d, u = allowed.T.nonzero(as_tuple=True)
        set_(self, "edge_downstream", d)
        set_(self, "edge_upstream", u)
        set_(self, "edges", [f"{up[i]}->{down[j]}" for i, j in zip(u.tolist(), d.tolist())])
        set_(self, "_edge_index", {name: i for i, name in enumerate(self.edges)})

    @classmethod
    def of_model(cls, model) -> CircuitGraph:
        """The model's graph (one object per shape: it is immutable, and 32k labels take ms to build)."""
        return _graph_of(cls, model.cfg.n_layer, model.cfg.n_head)

    # ------------------------------------------------------------------ indices
    def head_node(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_head + 1) + head

    def mlp_node(self, layer: int) -> int:
        return 1 + layer * (self.n_head + 1) + self.n_head

    def head_inputs(self, layer: int) -> range:
        """The downstream indices of block `layer`'s q, k and v inputs: (three head) order."""
        start = layer * (3 * self.n_head + 1)
        return range(start, start + 3 * self.n_head)

    def mlp_input(self, layer: int) -> int:
        return layer * (3 * self.n_head + 1) + 3 * self.n_head

    @property
    def logits_input(self) -> int:
        return self.n_layer * (3 * self.n_head + 1)

    def nodes_before(self, downstream: int) -> int:
        """How many upstream nodes (the first ones, in forward order) downstream input `downstream` reads."""
        layer, slot = divmod(downstream, 3 * self.n_head + 1)
        if layer == self.n_layer:
            return len(self.upstream)
        return 1 + layer * (self.n_head + 1) + (self.n_head if slot == 3 * self.n_head else 0)

    @property
    def allowed(self) -> Bool[Tensor, "upstream downstream"]:
        """True where an edge exists."""
        reads = torch.tensor([self.nodes_before(d) for d in range(len(self.downstream))])
        return torch.arange(len(self.upstream))[:, None] < reads[None, :]

    def layer_of_upstream(self, i: int) -> int:
        """A node's block (-1 for the input)."""
        return -1 if i == 0 else (i - 1) // (self.n_head + 1)

    def layer_of_downstream(self, j: int) -> int:
        """An input's block (n_layer for the logits)."""
        return j // (3 * self.n_head + 1)

    def __len__(self) -> int:
        return len(self.edges)

    # ------------------------------------------------------------------ names -> indices
    def edge_index(self, edges: Iterable[str | int] | Tensor) -> Int[Tensor, "_"]:
        """Edge indices of edge labels ("L0H1->L1H0.k") or indices; a boolean [edge] mask is
        taken as the edges where it is True. Unknown labels and indices out of range are refused,
        with the closest labels."""
        if isinstance(edges, Tensor) and edges.dtype == torch.bool:
            if edges.shape != (len(self),):
                raise InputError(f"an edge mask must have shape ({len(self)},) for this graph, got {tuple(edges.shape)}")
            return edges.nonzero().flatten()
        if isinstance(edges, (str, bytes)) or not hasattr(edges, "__iter__"):
            raise InputError(f"edges must be a list of edge labels (e.g. 'L0H1->L1H0.k') or indices, got {shown(edges)}")
        out = []
        for e in (edges.tolist() if isinstance(edges, Tensor) else edges):
            if isinstance(e, str):
                out.append(self._index_of(e))
            elif isinstance(e, int) and not isinstance(e, bool) and 0 <= e < len(self):
                out.append(e)
            else:
                raise InputError(f"{shown(e)} is not an edge: give a label such as {self.edges[0]!r} or an index "
                                 f"in [0, {len(self)})")
        return torch.tensor(out, dtype=torch.long)

    def edge_mask(self, edges: Iterable[str | int] | Tensor) -> Bool[Tensor, "edge"]:
        """A boolean [edge] mask of the given edges (labels, indices or a mask)."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[self.edge_index(edges)] = True
        return mask

    def _index_of(self, label: str) -> int:
        index = self._edge_index.get(label)  # type: ignore[attr-defined]
        if index is not None:
            return index
        up, sep, down = label.partition("->")
        problems = []
        if not sep:
            problems.append("an edge label is 'UPSTREAM->DOWNSTREAM'")
        else:
            if up not in self.upstream:
                problems.append(f"{up!r} is not a node (nodes: input, L{{layer}}H{{head}}, MLP{{layer}})")
            if down not in self.downstream:
                problems.append(f"{down!r} is not a node input (inputs: L{{layer}}H{{head}}.q/.k/.v, MLP{{layer}}, logits)")
            if not problems:
                problems.append(f"{down} does not read {up} (an input reads only nodes of earlier blocks, "
                                "and an MLP its own block's heads)")
        close = difflib.get_close_matches(label, self.edges, n=3)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise InputError(f"unknown edge {label!r} for a {self.n_layer}-layer, {self.n_head}-head graph: "
                         f"{'; '.join(problems)}{hint}")

    # ------------------------------------------------------------------ tables
    def to_frame(self) -> pd.DataFrame:
        """One row per edge: edge (label), upstream, downstream (labels), upstream_layer (-1: the
        input), downstream_layer (n_layer: the logits), upstream_head / downstream_head (None
        for the input, MLPs, logits) and input (q, k, v, mlp or logits: what the edge feeds)."""
        u, d = self.edge_upstream.tolist(), self.edge_downstream.tolist()
        return pd.DataFrame({
            "edge": self.edges,
            "upstream": [self.upstream[i] for i in u],
            "downstream": [self.downstream[j] for j in d],
            "upstream_layer": [self.layer_of_upstream(i) for i in u],
            "downstream_layer": [self.layer_of_downstream(j) for j in d],
            "upstream_head": pd.array([_head_of(self.upstream[i]) for i in u], dtype="Int64"),
            "downstream_head": pd.array([_head_of(self.downstream[j]) for j in d], dtype="Int64"),
            "input": [self._kind(j) for j in d],
        })

    def _kind(self, j: int) -> str:
        label = self.downstream[j]
        return label.rsplit(".", 1)[1] if "." in label else ("logits" if label == LOGITS else "mlp")


def _head_of(label: str) -> int | None:
    if label.startswith("L") and "H" in label:
        return int(label.split("H", 1)[1].split(".", 1)[0])
    return None


@functools.lru_cache(maxsize=8)
def _graph_of(cls: type[CircuitGraph], n_layer: int, n_head: int) -> CircuitGraph:
    return cls(n_layer, n_head)


def node_output_diff(
    cache: ActivationCache, base: ActivationCache, n_layer: int
) -> Float[Tensor, "upstream batch pos d_model"]:
    """Every node's output in the run of `cache` minus its output in the run of `base`, in the graph's
    node order: the input embeddings, then per block its heads' z W_O and its mlp_out. Computed from
    the differences of the cached activations (each output is linear in them)."""
    parts = [(cache["embed"] - base["embed"] + cache["pos_embed"] - base["pos_embed"])[None]]
    for l in range(n_layer):
        parts.append(einops.rearrange(cache.attention[l].head_results(cache["z", l] - base["z", l]),
                                      "batch pos head d_model -> head batch pos d_model"))
        parts.append((cache["mlp_out", l] - base["mlp_out", l])[None])
    return torch.cat(parts)


def cache_names(n_layer: int) -> list[str]:
    """The activations `node_output_diff` reads."""
    return [act_name("embed"), act_name("pos_embed")] + [
        act_name(kind, l) for l in range(n_layer) for kind in ("z", "mlp_out")
    ]
