"""Stacked weights, the OV and QK circuits and `FactoredMatrix` equal TransformerLens 4.x's.

The model's weights are compared with TransformerLens's `TransformerBridge` on the same weights (the
`bridge` fixture), `FactoredMatrix` with TransformerLens's own `FactoredMatrix` on the same factors,
and the ARENA "circuits" snippets (full OV circuit, its top-1 accuracy, positional QK pattern,
composition scores, copying scores) are run on both."""

import warnings

import pytest
import torch
from transformer_lens import FactoredMatrix as TLFactoredMatrix

import workbench
from workbench import FactoredMatrix
from workbench.errors import InputError

TOL = 1e-4

STACKED = {  # name: TransformerLens's shape, in the axis vocabulary
    "W_Q": "layer head d_model d_head", "W_K": "layer head d_model d_head", "W_V": "layer head d_model d_head",
    "W_O": "layer head d_head d_model", "b_Q": "layer head d_head", "b_K": "layer head d_head",
    "b_V": "layer head d_head", "b_O": "layer d_model", "W_in": "layer d_model d_mlp",
    "W_out": "layer d_mlp d_model", "b_in": "layer d_mlp", "b_out": "layer d_model",
}


def close(ours, theirs, tol=TOL):
    assert ours.shape == theirs.shape
    return (ours - theirs).abs().max().item() <= tol


# ---------------------------------------------------------------------------------- the model's weights
def test_stacked_weights_equal_transformerlens(model, bridge):
    c = model.cfg
    sizes = {"layer": c.n_layer, "head": c.n_head, "d_model": c.d_model, "d_head": c.d_head, "d_mlp": c.d_mlp}
    for name, axes in STACKED.items():
        ours = getattr(model, name)
        assert ours.shape == tuple(sizes[a] for a in axes.split()), name
        assert close(ours, getattr(bridge, name)), name


def test_block_weights_equal_transformerlens(model, bridge):
    with torch.no_grad():
        for ours, theirs in zip(model.blocks, bridge.blocks):
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
                assert close(getattr(ours.attn, name), getattr(theirs.attn, name)), name
            for name in ("W_in", "W_out", "b_in", "b_out"):
                assert close(getattr(ours.mlp, name), getattr(theirs.mlp, name)), name
            for ln in ("ln1", "ln2"):
                assert close(getattr(ours, ln).w, getattr(theirs, ln).w) and close(getattr(ours, ln).b, getattr(theirs, ln).b)
        assert close(model.ln_final.w, bridge.ln_final.w) and close(model.ln_final.b, bridge.ln_final.b)


def test_ov_and_qk_circuits_equal_transformerlens(model, bridge):
    with torch.no_grad():
        for ours, theirs in ((model.OV, bridge.OV), (model.QK, bridge.QK)):
            assert isinstance(ours, FactoredMatrix)
            assert ours.shape == theirs.shape == (model.cfg.n_layer, model.cfg.n_head, model.cfg.d_model, model.cfg.d_model)
            assert ours.mdim == theirs.mdim == model.cfg.d_head
            assert close(ours.AB, theirs.AB) and close(ours.A, theirs.A) and close(ours.B, theirs.B)
        for layer, block in enumerate(model.blocks):  # TransformerLens's per-block definition, on the bridge's stack
            assert close(block.attn.OV.AB, bridge.OV[layer].AB)
            assert close(block.attn.QK.AB, bridge.QK[layer].AB)


def test_qk_circuit_gives_the_attention_scores_and_ov_the_head_outputs(model, tokens):
    # independent of TransformerLens: read q, k, v, z and the head results off a forward pass
    layer = 1
    attn = model.blocks[layer].attn
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        x = model.blocks[layer].ln1(cache["resid_pre", layer])  # what the attention layer reads
        scores = torch.einsum("bqd,hde,bke->bhqk", x, model.QK[layer].AB, x)
        q_nobias, k_nobias = cache["q", layer] - attn.b_Q, cache["k", layer] - attn.b_K
        expected = torch.einsum("bqhd,bkhd->bhqk", q_nobias, k_nobias)
        assert close(scores, expected)
        # a head's result (before b_O) is the pattern-weighted OV image of what it reads, plus b_V @ W_O
        pattern = cache["pattern", layer]
        ov_image = torch.einsum("bkd,hde->bhke", x, attn.OV.AB)
        result = torch.einsum("bhqk,bhke->bqhe", pattern, ov_image) + torch.einsum("hd,hde->he", attn.b_V, attn.W_O)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result"))
        assert close(result, cache["result", layer], 1e-4)


def test_bias_free_model_gives_zero_biases():
    model = workbench.GPT(workbench.GPTConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=11, block_size=8, bias=False))
    for name, axes in STACKED.items():
        if name.startswith("b_"):
            value = getattr(model, name)
            assert value.shape[0] == 2 and not value.any(), name
    assert not model.blocks[0].ln1.b.any() and not model.blocks[0].attn.b_O.any()


# ---------------------------------------------------------------------------------- FactoredMatrix
def pair(seed, a_shape, b_shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(a_shape, generator=g, dtype=dtype), torch.randn(b_shape, generator=g, dtype=dtype)


SHAPES = {
    "plain": ((8, 3), (3, 6)),
    "square": ((7, 3), (3, 7)),
    "stacked": ((2, 4, 7, 3), (2, 4, 3, 7)),
    "broadcast": ((7, 3), (4, 3, 5)),  # leading axes of B only; A broadcasts
    "broadcast-both": ((2, 1, 6, 4), (3, 4, 6)),
    "wide": ((5, 9), (9, 4)),  # mdim larger than ldim and rdim
}


@pytest.fixture(params=list(SHAPES))
def both(request):
    A, B = pair(0, *SHAPES[request.param])
    return FactoredMatrix(A, B), TLFactoredMatrix(A, B)


def test_shape_attributes_and_products_equal_transformerlens(both):
    ours, theirs = both
    assert ours.shape == theirs.shape and ours.ndim == theirs.ndim
    assert (ours.ldim, ours.mdim, ours.rdim) == (theirs.ldim, theirs.mdim, theirs.rdim)
    assert ours.has_leading_dims == theirs.has_leading_dims
    assert close(ours.AB, theirs.AB, 1e-10) and close(ours.T.AB, theirs.T.AB, 1e-10)
    assert all(close(o, t, 0) for o, t in zip(ours.pair, theirs.pair))
    assert close(ours.get_corner(2), theirs.get_corner(2), 1e-10) and close(ours.get_corner(), theirs.get_corner(), 1e-10)
    assert close((ours * 2.5).AB, (theirs * 2.5).AB, 1e-10) and close((3 * ours).AB, (3 * theirs).AB, 1e-10)
    assert close((ours * torch.tensor(0.5)).AB, (theirs * torch.tensor(0.5)).AB, 1e-10)
    assert close(ours.unsqueeze(0).AB, theirs.unsqueeze(0).AB, 1e-10)
    assert repr(ours) == repr(theirs)
    if ours.ldim == ours.rdim:
        assert close(ours.BA, theirs.BA, 1e-10)


def test_svd_norm_and_spectrum_equal_transformerlens(both):
    ours, theirs = both
    U, S, V = ours.svd()
    tU, tS, tV = theirs.svd()
    assert close(S, tS, 1e-8) and close(U, tU, 1e-8) and close(V, tV, 1e-8)
    assert close(ours.U, tU, 1e-8) and close(ours.S, tS, 1e-8) and close(ours.V, tV, 1e-8)
    # V is not transposed: AB = U diag(S) V.T (TransformerLens 4.x's convention)
    assert close(U @ torch.diag_embed(S) @ V.mT, ours.AB, 1e-8)
    with pytest.warns(DeprecationWarning, match="returns V"):
        assert close(ours.Vh, tV, 1e-8)
    assert close(ours.norm(), theirs.norm(), 1e-8) and close(ours.norm(), torch.linalg.matrix_norm(ours.AB), 1e-8)
    assert close(ours.collapse_l(), theirs.collapse_l(), 1e-8) and close(ours.collapse_r(), theirs.collapse_r(), 1e-8)
    even, t_even = ours.make_even(), theirs.make_even()
    assert close(even.A, t_even.A, 1e-8) and close(even.B, t_even.B, 1e-8) and close(even.AB, ours.AB, 1e-8)
    if ours.ldim == ours.rdim:
        assert close(ours.eigenvalues, theirs.eigenvalues, 1e-8)


def test_matmul_with_tensors_and_factored_matrices_equals_transformerlens(both):
    ours, theirs = both
    g = torch.Generator().manual_seed(3)
    for n in (2, 40):  # both sides of the "keep the thinner factorisation" choice
        right = torch.randn(ours.rdim, n, generator=g, dtype=torch.float64)
        left = torch.randn(n, ours.ldim, generator=g, dtype=torch.float64)
        for o, t in ((ours @ right, theirs @ right), (left @ ours, left @ theirs)):
            assert isinstance(o, FactoredMatrix) and o.shape == t.shape and o.mdim == t.mdim
            assert close(o.AB, t.AB, 1e-9)
        assert close((ours @ right).AB, ours.AB @ right, 1e-9) and close((left @ ours).AB, left @ ours.AB, 1e-9)
    vec_r = torch.randn(ours.rdim, generator=g, dtype=torch.float64)
    vec_l = torch.randn(ours.ldim, generator=g, dtype=torch.float64)
    assert close(ours @ vec_r, theirs @ vec_r, 1e-9) and close(ours @ vec_r, ours.AB @ vec_r, 1e-9)
    assert close(vec_l @ ours, vec_l @ theirs, 1e-9) and close(vec_l @ ours, vec_l @ ours.AB, 1e-9)
    A2, B2 = pair(5, (ours.rdim, 2), (2, 6))
    product, t_product = ours @ FactoredMatrix(A2, B2), theirs @ TLFactoredMatrix(A2, B2)
    assert isinstance(product, FactoredMatrix) and close(product.AB, t_product.AB, 1e-9)
    assert close(product.AB, ours.AB @ (A2 @ B2), 1e-9)


INDICES = [
    0, -1, (0, 1), (1, 0, 2), (slice(None), 0), (..., 0), (..., 0, 1), (..., -1, -1), (..., slice(1, 4)),
    (..., slice(1, 4), slice(2, None)), (..., torch.tensor([0, 2, 1])), (..., torch.tensor([0, 2]), torch.tensor([1, 3])),
    (..., [0, 2], [1, 3]), (None, 0), (..., None, slice(None), slice(None)), (..., slice(None), None, slice(None)),
    (..., None), (..., torch.tensor(1), slice(None)), torch.tensor([1, 0]), [1, 0], torch.tensor([True, False]),
]


@pytest.mark.parametrize("index", INDICES, ids=[repr(i).replace(" ", "") for i in INDICES])
def test_indexing_equals_transformerlens(index):
    A, B = pair(1, (2, 3, 6, 4), (2, 3, 4, 5))
    ours, theirs = FactoredMatrix(A, B), TLFactoredMatrix(A, B)
    o, t = ours[index], theirs[index]
    assert isinstance(o, FactoredMatrix) and o.shape == t.shape
    assert close(o.A, t.A, 0) and close(o.B, t.B, 0) and close(o.AB, t.AB, 1e-10)


def test_indexing_a_plain_matrix_equals_transformerlens():
    A, B = pair(4, (6, 3), (3, 5))
    ours, theirs = FactoredMatrix(A, B), TLFactoredMatrix(A, B)
    for index in (0, -1, (0, 1), (-1, -1), slice(1, 4), (torch.tensor([4, 0]), 1), (..., torch.tensor([0, 3])), (None,)):
        o, t = ours[index], theirs[index]
        assert o.shape == t.shape and close(o.AB, t.AB, 1e-10), index


def test_indexing_stacked_circuits_selects_heads():
    A, B = pair(2, (2, 3, 6, 4), (2, 3, 4, 6))
    fm = FactoredMatrix(A, B)
    assert close(fm[1, 2].AB, A[1, 2] @ B[1, 2], 1e-10)
    rows, cols = torch.tensor([4, 0]), torch.tensor([1, 5, 2])
    assert close(fm[1, 2][rows, cols].AB, (A[1, 2] @ B[1, 2])[rows][:, cols], 1e-10)  # a block, not pairs
    assert close(fm[1, 2, 3].AB, (A[1, 2] @ B[1, 2])[3:4], 1e-10)  # an int row keeps its axis


def test_bad_shapes_are_input_errors():
    A, B = pair(0, (4, 3), (3, 5))
    with pytest.raises(InputError, match="mdim"):
        FactoredMatrix(A, B.mT)
    with pytest.raises(InputError, match="do not broadcast"):
        FactoredMatrix(torch.randn(2, 4, 3), torch.randn(3, 3, 5))
    fm = FactoredMatrix(A, B)
    with pytest.raises(InputError, match="rdim"):
        fm @ torch.randn(4, 2)
    with pytest.raises(InputError, match="ldim"):
        torch.randn(2, 5) @ fm
    with pytest.raises(InputError, match="ldim == rdim"):
        fm.BA
    with pytest.raises(InputError, match="scalar"):
        fm * torch.randn(2)
    with pytest.raises(InputError, match="does not fit"):
        fm[0, 0, 0]
    with pytest.raises(InputError, match="leading-axis"):
        fm.unsqueeze(1)


def test_16_bit_factors_are_decomposed_in_float32():
    A, B = pair(0, (6, 3), (3, 6), dtype=torch.float32)
    half = FactoredMatrix(A.bfloat16(), B.bfloat16())
    reference = TLFactoredMatrix(A.bfloat16(), B.bfloat16())
    assert half.S.dtype == torch.float32 and close(half.S, reference.S, 1e-6)
    assert close(half.eigenvalues, reference.eigenvalues, 1e-5)


# ---------------------------------------------------------------------------------- ARENA: circuits
def test_arena_full_ov_circuit_and_its_top_1_accuracy(model, bridge):
    # ARENA 1.2 "Reverse-engineering induction circuits": W_E @ OV[layer, head] @ W_U stays factored
    layer, head = 1, 2
    with torch.no_grad():
        full_OV_circuit = model.W_E @ model.OV[layer, head] @ model.W_U
        tl_full_OV_circuit = bridge.W_E @ bridge.OV[layer, head] @ bridge.W_U
        assert isinstance(full_OV_circuit, FactoredMatrix)
        assert full_OV_circuit.shape == tl_full_OV_circuit.shape == (model.cfg.d_vocab, model.cfg.d_vocab)
        assert full_OV_circuit.mdim == tl_full_OV_circuit.mdim == model.cfg.d_head
        indices = torch.randint(0, model.cfg.d_vocab, (200,), generator=torch.Generator().manual_seed(0))
        sample = full_OV_circuit[indices, indices].AB
        assert close(sample, tl_full_OV_circuit[indices, indices].AB)
        assert close(sample, (model.W_E[indices] @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U[:, indices]))

        def top_1_acc(full_OV_circuit, rows, batch_size=500):
            total = 0
            for idx in torch.split(rows, batch_size):
                AB_slice = full_OV_circuit[idx].AB
                total += (torch.argmax(AB_slice, dim=1) == idx).float().sum().item()
            return total / len(rows)

        rows = torch.arange(1500)  # the whole vocabulary takes minutes on a CPU; the same rows for both
        assert top_1_acc(full_OV_circuit, rows) == top_1_acc(tl_full_OV_circuit, rows)


def test_arena_positional_qk_pattern(model, bridge):
    def mask_scores(scores):
        mask = torch.tril(torch.ones_like(scores)).bool()
        return scores.masked_fill(~mask, -1.0e6)

    def pos_pattern(m, layer, head):
        W_pos = m.W_pos
        W_QK = m.W_Q[layer, head] @ m.W_K[layer, head].T
        pos_by_pos_scores = W_pos @ W_QK @ W_pos.T
        return torch.softmax(mask_scores(pos_by_pos_scores / m.cfg.d_head**0.5), dim=-1)

    with torch.no_grad():
        ours, theirs = pos_pattern(model, 0, 3), pos_pattern(bridge, 0, 3)
        assert close(ours, theirs)
        via_qk = model.W_pos @ model.QK[0, 3] @ model.W_pos.T  # the same scores through the FactoredMatrix
        assert close(via_qk.AB, (bridge.W_pos @ bridge.QK[0, 3] @ bridge.W_pos.T).AB)


def test_arena_composition_scores(model, bridge):
    def get_batched_comp_scores(W_As, W_Bs):
        W_As = FactoredMatrix(W_As.A.unsqueeze(1), W_As.B.unsqueeze(1))
        W_Bs = FactoredMatrix(W_Bs.A.unsqueeze(0), W_Bs.B.unsqueeze(0))
        return (W_As @ W_Bs).norm() / (W_As.norm() * W_Bs.norm())

    def tl_batched_comp_scores(W_As, W_Bs):
        W_As = TLFactoredMatrix(W_As.A.unsqueeze(1), W_As.B.unsqueeze(1))
        W_Bs = TLFactoredMatrix(W_Bs.A.unsqueeze(0), W_Bs.B.unsqueeze(0))
        return (W_As @ W_Bs).norm() / (W_As.norm() * W_Bs.norm())

    with torch.no_grad():
        for ours_B, tl_B in ((model.QK[1], bridge.QK[1]), (model.QK[1].T, bridge.QK[1].T), (model.OV[1], bridge.OV[1])):
            scores = get_batched_comp_scores(model.OV[0], ours_B)  # q-, k- and v-composition
            assert scores.shape == (model.cfg.n_head, model.cfg.n_head)
            assert close(scores, tl_batched_comp_scores(bridge.OV[0], tl_B))
        # one cell by the plain-tensor formula ARENA starts from
        W_A, W_B = model.OV[0, 1].AB, model.QK[1, 2].AB
        assert close(get_batched_comp_scores(model.OV[0], model.QK[1])[1, 2], (W_A @ W_B).norm() / (W_A.norm() * W_B.norm()))


def test_copying_scores_from_eigenvalues(model, bridge):
    # "A Mathematical Framework": a head copies when its full OV circuit's eigenvalues are mostly positive
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eig = (model.W_E @ model.OV @ model.W_U).eigenvalues  # [layer head d_head]: d_vocab never formed
            tl_eig = (bridge.W_E @ bridge.OV @ bridge.W_U).eigenvalues
        copying = (eig.sum(-1) / eig.abs().sum(-1)).real
        assert copying.shape == (model.cfg.n_layer, model.cfg.n_head)
        assert close(copying, (tl_eig.sum(-1) / tl_eig.abs().sum(-1)).real)
