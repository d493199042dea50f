"""Replay's comparison policy (workbench.experiments.replaying): what is compared, how closely,
and what must match. The end-to-end replays are in test_experiments.py."""

import torch

from workbench.experiments.replaying import EXACT, compare_tensor, tolerance_for


def test_compare_tensor_exact_and_within_tolerance():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert compare_tensor("x", x, x.clone(), EXACT).ok
    nudged = x.clone()
    nudged[1, 2] = torch.nextafter(nudged[1, 2], torch.tensor(10.0))  # one ulp
    assert not compare_tensor("x", x, nudged, EXACT).ok
    tol = tolerance_for(torch.float32, torch.float32)
    assert compare_tensor("x", x, nudged, tol).ok
    assert not compare_tensor("x", x, x + 1e-2, tol).ok
    assert compare_tensor("x", x, x.half().float(), tolerance_for(torch.float32, torch.float16)).ok
    assert not compare_tensor("x", x, x[:3], tol).ok  # shape
    ids = torch.arange(200)
    flipped = ids.clone()
    flipped[0] = 7
    assert not compare_tensor("ids", ids, flipped, EXACT).ok
    near_tie = compare_tensor("ids", ids, flipped, tol)  # ranks and top tokens flip at near-ties elsewhere
    assert not near_tie.ok and not near_tie.required and "0.5% of entries differ" in near_tie.detail
    nan = torch.tensor([1.0, float("nan")])
    assert compare_tensor("nan", nan, nan.clone(), EXACT).ok


def test_skipped_cells_compare_by_place():
    """Path patching leaves senders that reach no receiver NaN: the same NaNs replay as a match, a
    sender computed in one run and skipped in the other does not."""
    values = torch.tensor([[0.5, -1.0], [float("nan"), float("nan")]])
    tol = tolerance_for(torch.float32, torch.bfloat16)
    assert compare_tensor("values", values, values + 1e-3, tol).ok
    moved = values.clone()
    moved[1, 0] = 0.5
    result = compare_tensor("values", values, moved, tol)
    assert not result.ok and "NaNs in different places" in result.detail
    assert not compare_tensor("values", values, moved, EXACT).ok


def test_dla_table_with_missing_layers_compares_after_a_parquet_round_trip(tmp_path):
    """A DLA components table has no layer or index for embed, pos_embed and the LayerNorm bias
    (NA in nullable integer columns): read back from Parquet, as replay reads a record, it matches
    itself exactly and within tolerance, and a changed value fails."""
    import pandas as pd

    from workbench.experiments.replaying import compare_table
    from workbench.methods.dla import DLAResult

    g = torch.Generator().manual_seed(0)
    result = DLAResult(
        by="layer", pos=4, direction="logit[' Mary'] - logit[' John']", per_prompt=torch.randn(3, 2, generator=g),
        labels=["L0", "L1"], terms_per_prompt=torch.randn(3, 3, generator=g),
        term_labels=["embed", "pos_embed", "ln_final_bias"], total=torch.randn(3, generator=g),
        attn_out=torch.randn(3, 2, generator=g), mlp_out=torch.randn(3, 2, generator=g),
        accumulated=torch.randn(3, 5, generator=g), accumulated_labels=["0_pre", "0_mid", "1_pre", "1_mid", "final_post"])
    frame = result.to_frame()
    assert frame["layer"].isna().sum() == 3
    frame.to_parquet(tmp_path / "components.parquet", index=False)
    recorded = pd.read_parquet(tmp_path / "components.parquet")
    tol = tolerance_for(torch.float32, torch.bfloat16)
    assert compare_table("components", recorded, frame, EXACT).ok
    assert compare_table("components", recorded, frame, tol).ok
    changed = frame.copy()
    changed.loc[0, "value"] += 1.0
    result = compare_table("components", recorded, changed, tol)
    assert not result.ok and "value" in result.detail
