"""What the ported-notebook tests share: run a snippet on TransformerLens and on workbench, compare
every value it returns to `TOL`. A snippet is `snippet(model, lib)` where `lib` holds the library
under test's `utils`, `FactoredMatrix` and `patching`; it returns a value, or a dict / list / tuple of values."""

from types import SimpleNamespace

import torch
import transformer_lens
import transformer_lens.patching
import transformer_lens.utilities

import workbench

TOL = 1e-4
TL = SimpleNamespace(utils=transformer_lens.utilities, FactoredMatrix=transformer_lens.FactoredMatrix,
                     patching=transformer_lens.patching)
WB = SimpleNamespace(utils=workbench.utils, FactoredMatrix=workbench.FactoredMatrix, patching=workbench.patching)


def assert_same(ours, theirs, what=""):
    """`ours` equals `theirs`: floats and float tensors to TOL, everything else exactly."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), what
        assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
        if theirs.is_floating_point() or theirs.is_complex():
            assert (ours.cpu() - theirs.cpu()).abs().max().item() <= TOL, (what, ours, theirs)
        else:
            assert torch.equal(ours.cpu(), theirs.cpu()), what
    elif isinstance(theirs, float):
        assert abs(ours - theirs) <= TOL, (what, ours, theirs)
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), what
        for a, b in zip(ours, theirs):
            assert_same(a, b, what)
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), what
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{what}[{k}]" if what else k)
    else:
        assert ours == theirs, (what, ours, theirs)


def run_both(snippet, bridge, model):
    """Run `snippet` on TransformerLens (`bridge`) and on workbench (`model`); compare what it returns."""
    with torch.no_grad():
        theirs = snippet(bridge, TL)
        ours = snippet(model, WB)
    assert_same(ours, theirs)
    return ours, theirs
