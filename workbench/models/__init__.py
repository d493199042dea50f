"""The typed GPT: config, embed (embed, pos_embed, unembed), layernorm, attention, mlp, gpt (the
model), weights (every layer's weights stacked, the OV and QK circuits), factored_matrix
(`FactoredMatrix`), tokens (text and token ids), tokenizer, loading (checkpoints), bundled and
default (the models shipped with the package).

Axis vocabulary. Every annotation, einops pattern, DataFrame column and plot axis in workbench
uses these names, and only these:

    batch      one prompt of a batch of prompts
    pos        a token position in a prompt (0 is the first token: BOS when the prompt has one)
    query_pos  the attending position of an attention map [batch head query_pos key_pos]
    key_pos    the attended-to position of an attention map
    d_model    the residual stream's width
    head       an attention head of a block
    d_head     a head's query, key, value and output width (d_model / n_head)
    d_mlp      the MLP's hidden width (its neurons)
    d_vocab    the vocabulary (logits, log-probs)
    layer      a block (0 to n_layer - 1); in a stack of the residual stream (the cache's
               `accumulated_resid`, the logit lens) a point of the stream: each block's resid_pre,
               then the final resid_post, n_layer + 1 of them, labelled "0_pre" ... "final_post"
    component  one term of a residual-stream decomposition (embed, pos_embed, an attn_out or an
               mlp_out, a head's result: the cache's `decompose_resid`, `stack_head_results`), or
               the kind of part an `Ablation` knocks out (head, attn, mlp, neuron)
    stack      any leading axes of a stack of residual-stream pieces (layer or component)
    cell       one patched run of a patching or ablation sweep: one value of its result, indexed
               by (layer, pos), (layer, head) or (layer, pos, head)
    prompt     one prompt of a prompt set, the axis of a sweep's per-prompt values [... prompt]
               (the `batch` the sweep ran, kept instead of averaged over)
    row        one (cell, prompt) pair in a packed sweep forward, `(cell batch)`
    token      one (row, position) pair that a packed sweep forward actually computes
    k          a rank among the most likely next tokens (the logit lens's top k)
    three      q, k and v, when the fused c_attn output is split
    part       those of q, k and v asked for (`Attention.split_qkv(x, parts="kv")`)
    ldim       the rows of a `FactoredMatrix` A @ B (A's rows), e.g. d_model for a head's OV circuit
    mdim       the inner width a `FactoredMatrix`'s factors share (A's columns, B's rows), e.g. d_head
    rdim       the columns of a `FactoredMatrix` (B's columns)
    upstream   a node of a circuit graph, something that writes to the residual stream: the input
               embeddings, a head's output, an MLP's output (`methods.circuit.CircuitGraph`)
    downstream  an input of a circuit graph, something that reads the residual stream: a head's q,
               k or v input, an MLP's input, the logits
    edge       an (upstream, downstream) pair of a circuit graph: a node's output read by a later input
    run        one of the two reference runs a circuit's run is built from: 0 the corrupted run, 1 the
               clean run (`methods.circuit.forward.reference_run`)
    pair       one (cell, node) or (cell, input) pair that a circuit's run computes: a circuit graph's
               piece whose status is MIXED (`methods.circuit.forward.circuit_forward`)

(`_` in an annotation is jaxtyping's unchecked axis. As a DataFrame column, `token` is the text of
the token at `pos`.)
"""

from workbench.models.config import PRESETS, GPTConfig
from workbench.models.factored_matrix import FactoredMatrix
from workbench.models.gpt import GPT, Block
from workbench.models.loading import load_model
from workbench.models.tokenizer import gpt2_tokenizer

__all__ = ["GPT", "GPTConfig", "Block", "FactoredMatrix", "PRESETS", "gpt2_tokenizer", "load_model"]
