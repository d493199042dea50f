"""`FactoredMatrix`: a matrix kept as the product A @ B of two thin factors, as TransformerLens has it.

A head's OV circuit W_V W_O is a [d_model d_model] matrix of rank d_head; stored as its two factors it
costs 2 d_model d_head numbers, and products with it (W_E @ OV @ W_U, a [d_vocab d_vocab] matrix) stay
factored until someone asks for the product (`AB`) or a slice of it. The names and semantics are
TransformerLens's (`transformer_lens.FactoredMatrix`), so ported circuit code gives the same numbers:

    ldim   the rows of the product (A's rows)
    mdim   the inner width that A and B share (d_head for a head's OV or QK circuit)
    rdim   the columns of the product (B's columns)

Any axes before those are leading axes (e.g. `layer head` for `model.OV`); A's and B's broadcast
against each other when the matrix is built, as in `torch.matmul`.

The SVD is computed from the factors (an SVD of each, then of the small [mdim mdim] middle), never
from the product. As in TransformerLens 4.x, `svd()` returns (U, S, V) with U @ diag(S) @ V.T == AB,
V holding the right singular vectors as columns (not V's transpose, whatever `Vh` suggests: `Vh` is
TransformerLens's old name for V and warns as TransformerLens does).
"""

from __future__ import annotations

import numbers
import warnings
from functools import cached_property
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Complex, Float
from torch import Tensor

from workbench.errors import InputError


def _for_linalg(x: Tensor) -> Tensor:
    """torch.linalg's SVD and eig have no 16-bit kernels: work in float32 there."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _as_int(item: Any) -> int | None:
    """The Python int an index item stands for (an int, a numpy integer, a 0-d integer tensor), else None.
    A Python bool counts as an int here, as TransformerLens reads it in a row or column index."""
    if isinstance(item, numbers.Integral):
        return int(item)
    if isinstance(item, Tensor) and item.ndim == 0 and not item.dtype.is_floating_point \
            and not item.dtype.is_complex and item.dtype != torch.bool:
        return int(item.item())
    return None


def _axes_consumed(item: Any) -> int:
    """How many axes of the indexed matrix an index item uses up (torch's rules)."""
    if item is None or item is Ellipsis:
        return 0
    if isinstance(item, (list, tuple)):
        as_tensor = torch.as_tensor(item, device="cpu")
        return as_tensor.ndim if as_tensor.dtype == torch.bool else 1
    if isinstance(item, Tensor) and item.dtype in (torch.bool, torch.uint8):
        return item.ndim  # a mask uses up one axis per mask axis
    if isinstance(item, np.ndarray) and item.dtype in (np.bool_, np.uint8):
        return item.ndim
    return 1


def _keep_axis(item: Any) -> Any:
    """A row or column index: an int i becomes the slice i:i+1, so the factor keeps that axis."""
    i = _as_int(item)
    if i is None:
        return item
    return slice(i, i + 1 if i != -1 else None)


class FactoredMatrix:
    """The matrix A @ B, kept as A [... ldim mdim] and B [... mdim rdim] (leading axes broadcast).

    `AB` is the product, `BA` the reverse product (when ldim == rdim), `T` the transpose; `svd()`,
    `U`, `S`, `V`, `eigenvalues` and `norm()` come from the factors. `@` with a tensor or another
    FactoredMatrix on either side stays factored (a vector gives a tensor), `*` scales by a scalar,
    and indexing (`OV[layer, head]`, `M[rows]`, `M[rows, cols]`) slices the factors."""

    # A's mdim and B's are checked in the body, with an InputError that says what does not match.
    def __init__(self, A: Float[Tensor, "... ldim _"], B: Float[Tensor, "... _ rdim"]) -> None:
        if A.ndim < 2 or B.ndim < 2:
            raise InputError(f"FactoredMatrix needs matrices A [... ldim mdim] and B [... mdim rdim]; "
                             f"got A of shape {tuple(A.shape)} and B of shape {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise InputError(f"FactoredMatrix: A's last axis ({A.shape[-1]}) must equal B's second to last "
                             f"(mdim, {B.shape[-2]}); got A {tuple(A.shape)}, B {tuple(B.shape)}")
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError:
            raise InputError(f"FactoredMatrix: the leading axes of A {tuple(A.shape[:-2])} and B "
                             f"{tuple(B.shape[:-2])} do not broadcast") from None
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        self.shape = torch.Size((*leading, self.ldim, self.rdim))
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        self.A = A.broadcast_to((*leading, self.ldim, self.mdim))  # views, not copies
        self.B = B.broadcast_to((*leading, self.mdim, self.rdim))

    # ------------------------------------------------------------------ products
    @property
    def AB(self) -> Float[Tensor, "... ldim rdim"]:
        """The product A @ B ([... ldim rdim]; for W_E @ OV @ W_U that is [d_vocab d_vocab]: slice first)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... mdim mdim"]:
        """The reverse product B @ A [... mdim mdim]; only when ldim == rdim."""
        if self.ldim != self.rdim:
            raise InputError(f"BA needs a square matrix (ldim == rdim); this one has shape {tuple(self.shape)}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, B.T @ A.T."""
        return FactoredMatrix(self.B.mT, self.A.mT)

    def __matmul__(self, other: FactoredMatrix | Tensor) -> FactoredMatrix | Tensor:
        """self @ other. A vector [rdim] gives a tensor [... ldim]; a matrix [... rdim n] or a
        FactoredMatrix gives a FactoredMatrix, keeping the thinner of the two factorisations."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if other.ndim < 2:
            self._check_inner(other.shape[-1] if other.ndim else None, self.rdim, "right", other)
            return einops.rearrange(self.A @ (self.B @ other[:, None]), "... ldim 1 -> ... ldim")
        self._check_inner(other.shape[-2], self.rdim, "right", other)
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: FactoredMatrix | Tensor) -> FactoredMatrix | Tensor:
        """other @ self. A vector [ldim] gives a tensor [... rdim]; a matrix [... n ldim] a FactoredMatrix."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        self._check_inner(other.shape[-1] if other.ndim else None, self.ldim, "left", other)
        if other.ndim < 2:
            return einops.rearrange((other[None, :] @ self.A) @ self.B, "... 1 rdim -> ... rdim")
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def _check_inner(self, got: int | None, want: int, side: str, other: Tensor) -> None:
        if got != want:
            axis = "rdim" if side == "right" else "ldim"
            raise InputError(f"FactoredMatrix of shape {tuple(self.shape)}: a {side} operand of @ must match its "
                             f"{axis} ({want}); got a tensor of shape {tuple(other.shape)}")

    def __mul__(self, scalar: int | float | Tensor) -> FactoredMatrix:
        """The matrix times a scalar (applied to A). For a matrix product use @."""
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise InputError(f"FactoredMatrix * takes a scalar, got a tensor of shape {tuple(scalar.shape)}; "
                             "for a matrix product use @")
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: int | float | Tensor) -> FactoredMatrix:
        return self * scalar

    # ------------------------------------------------------------------ spectrum
    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        # A B = Ua diag(Sa) Vha Ub diag(Sb) Vhb = Ua (middle) Vhb; the SVD of the small middle finishes it.
        Ua, Sa, Vha = torch.linalg.svd(_for_linalg(self.A), full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(_for_linalg(self.B), full_matrices=False)
        middle = (Sa[..., :, None] * Vha) @ (Ub * Sb[..., None, :])
        Um, S, Vhm = torch.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, S, (Vhm @ Vhb).mT

    def svd(self) -> tuple[Float[Tensor, "... ldim _"], Float[Tensor, "... _"], Float[Tensor, "... rdim _"]]:
        """(U, S, V) with AB == U @ diag(S) @ V.T: U [... ldim k], S [... k] (descending), V [... rdim k],
        k = min(ldim, mdim, rdim) (mdim for a head's circuit). V is not transposed (TransformerLens 4.x's
        convention). Computed once per matrix; 16-bit factors are decomposed in float32."""
        return self._svd

    @property
    def U(self) -> Float[Tensor, "... ldim _"]:
        """Left singular vectors, as columns (`svd()[0]`)."""
        return self.svd()[0]

    @property
    def S(self) -> Float[Tensor, "... _"]:
        """Singular values, descending (`svd()[1]`)."""
        return self.svd()[1]

    @property
    def V(self) -> Float[Tensor, "... rdim _"]:
        """Right singular vectors, as columns (`svd()[2]`): AB == U @ diag(S) @ V.T."""
        return self.svd()[2]

    @property
    def Vh(self) -> Float[Tensor, "... rdim _"]:
        """TransformerLens's old name for `V` (it returns V, not V.T); warns, as TransformerLens 4.x does."""
        warnings.warn("FactoredMatrix.Vh returns V (the right singular vectors as columns), not V.T, as in "
                      "TransformerLens; use .V", DeprecationWarning, stacklevel=2)
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[Tensor, "... mdim"]:
        """Eigenvalues of AB (ldim == rdim): those of the small BA, which are AB's nonzero ones (if BA v = k v
        then AB (A v) = k A v). mdim of them, unsorted, as torch.linalg.eig returns them."""
        return torch.linalg.eig(_for_linalg(self.BA)).eigenvalues

    def norm(self) -> Float[Tensor, "..."]:
        """Frobenius norm of AB, sqrt of the sum of squared singular values: one per leading index."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """The same matrix factored as (U sqrt(S), sqrt(S) V.T): each factor carries half of each singular value."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * self.V.mT)

    def collapse_l(self) -> Float[Tensor, "... _ rdim"]:
        """diag(S) @ V.T [... k rdim]: the matrix with its left orthogonal factor U dropped."""
        return self.S[..., :, None] * self.V.mT

    def collapse_r(self) -> Float[Tensor, "... ldim _"]:
        """U @ diag(S) [... ldim k]: the matrix with its right orthogonal factor V.T dropped."""
        return self.U * self.S[..., None, :]

    # ------------------------------------------------------------------ shape
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[Float[Tensor, "... ldim mdim"], Float[Tensor, "... mdim rdim"]]:
        """(A, B)."""
        return self.A, self.B

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """A new leading axis of size 1 at position k (0 <= k <= the number of leading axes)."""
        if not 0 <= k <= self.ndim - 2:
            raise InputError(f"unsqueeze: k must be a leading-axis position 0..{self.ndim - 2} of a FactoredMatrix "
                             f"of shape {tuple(self.shape)}, got {k}")
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left corner of AB: the first k entries along every axis (leading axes included)."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def __getitem__(self, index: Any) -> FactoredMatrix:
        """Index AB's axes without forming it: leading axes index both factors, a row index A's rows, a
        column index B's columns. An int row or column keeps its axis (size 1), and an index that
        names both rows and columns (tensors or lists) selects the block rows x columns, not pairs:
        M[idx, idx] is AB[idx][:, idx]. `None` adds an axis, `...` stands for the axes not named."""
        items = index if isinstance(index, tuple) else (index,)
        ellipses = [i for i, item in enumerate(items) if item is Ellipsis]
        if len(ellipses) > 1:
            raise InputError(f"an index can hold at most one ellipsis, got {index!r}")
        if ellipses:
            fill = self.ndim - sum(_axes_consumed(item) for item in items)
            at = ellipses[0]
            items = items[:at] + (slice(None),) * fill + items[at + 1 :]
        n_leading = self.ndim - 2
        leading: list[Any] = []
        row: Any = slice(None)
        col: Any = slice(None)
        new_axes: list[int] = []  # 0: before the rows, 1: between rows and columns, 2: after the columns
        consumed = 0
        for item in items:
            if item is None and consumed >= n_leading:
                new_axes.append(consumed - n_leading)
                continue
            width = _axes_consumed(item)
            if consumed + width <= n_leading:
                leading.append(item)
            elif consumed == n_leading and width == 1:
                row = _keep_axis(item)
            elif consumed == n_leading + 1 and width == 1:
                col = _keep_axis(item)
            else:
                raise InputError(f"index {index!r} does not fit a FactoredMatrix of shape {tuple(self.shape)} "
                                 f"({n_leading} leading axes, then rows and columns)")
            consumed += width
        lead = tuple(leading)
        result = FactoredMatrix(self.A[lead + (row, slice(None))], self.B[lead + (slice(None), col)])
        for where in new_axes:
            if where == 0:  # a new leading axis just before the matrix
                result = result.unsqueeze(result.ndim - 2)
            elif where == 1:  # rows become a leading axis, the new row axis has size 1
                result = FactoredMatrix(result.A.unsqueeze(-2), result.B.unsqueeze(-3))
            else:  # rows become a leading axis, columns become the rows, the new column axis has size 1
                result = FactoredMatrix(result.B.mT.unsqueeze(-3), result.A.unsqueeze(-1))
        return result

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"
