"""Metrics on logits: logit difference, token (log-)probability, KL to a reference, and `normalize`.

Each metric comes twice. The function (`logit_diff(logits, answer, wrong)`) evaluates it on one
set of logits and returns a scalar. The class (`LogitDiff(answer, wrong)`) is what the sweeps take:
it says which positions it reads (`positions`), so a sweep unembeds only those, and it evaluates
many patched runs at once (`evaluate` takes logits with a leading `cell` axis, one entry per
patched cell packed into the batch). Any plain callable `metric(logits) -> scalar` works too (as
TransformerLens code passes them, e.g. `functools.partial(logit_diff, answer=..., wrong=...)`): a
sweep calls it once per cell on full-shaped logits [batch pos d_vocab], and first finds which
logits it reads (`find_reads`), so that only those are computed; where that cannot be established
it computes every logit and warns once.

Every metric is a mean over the batch: the built-in classes give the per-prompt values that mean
is taken over (`per_prompt`, [*cell batch]), which sweeps keep when asked (`per_prompt=True`) for
intervals over prompts (`methods.statistics`). A plain callable returns one number for the batch
and has no per-prompt values.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.errors import InputError

TokenIds = int | Int[Tensor, "batch"]


class Metric:
    """A scalar function of logits that knows which positions it reads.

    Subclasses set `positions` (a tuple of positions, negative counts from the end; None = all)
    and implement `evaluate(logits)`, where logits hold only those positions, in that order, and
    may carry leading `cell` axes: [*cell batch pos d_vocab] -> [*cell]. Calling the metric on
    full logits [batch pos d_vocab] returns the scalar.
    """

    positions: tuple[int, ...] | None = None
    # The token ids it reads from the logits (None: it may read any). Sweeps then compute only
    # those logits and leave the others 0.
    vocab: tuple[int, ...] | None = None
    name: str = "metric"
    batched: bool = True  # evaluate() accepts leading cell axes

    def evaluate(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell"]:
        return einops.reduce(self.per_prompt(logits), "... batch -> ...", "mean")

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        """The value of each prompt, of which `evaluate` is the mean (logits as for `evaluate`)."""
        raise InputError(no_per_prompt_message(self.name))

    @property
    def has_per_prompt(self) -> bool:
        """Whether this metric gives per-prompt values (a plain callable does not)."""
        return type(self).per_prompt is not Metric.per_prompt

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return self.evaluate(self.select(logits))

    def read_positions(self, n_pos: int) -> list[int]:
        """The positions this metric reads in a prompt of `n_pos` tokens, as indices in [0, n_pos)."""
        if self.positions is None:
            return list(range(n_pos))
        out = []
        for p in self.positions:
            if not -n_pos <= p < n_pos:
                raise InputError(f"metric {self.name!r} reads position {p}, but the prompt has {n_pos} positions")
            out.append(p % n_pos)
        return out

    def select(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch _ d_vocab"]:
        """The logits at this metric's positions."""
        if self.positions is None:
            return logits
        idx = torch.tensor(self.read_positions(logits.shape[-2]), device=logits.device)
        return logits.index_select(-2, idx)


def _take(
    logprobs: Float[Tensor, "*cell batch d_vocab"], token: int | Tensor, what: str
) -> Float[Tensor, "*cell batch"]:
    """logprobs[..., b, token[b]] (or [..., token] for one id)."""
    if isinstance(token, int):
        return logprobs[..., token]
    batch = logprobs.shape[-2]
    if token.shape[0] != batch:
        raise InputError(f"{what} has {token.shape[0]} token ids but the logits have batch size {batch}")
    return logprobs[..., torch.arange(batch, device=logprobs.device), token.to(logprobs.device)]


def no_per_prompt_message(name: str) -> str:
    return (f"metric {name!r} gives one value for the whole batch, not one per prompt; per-prompt values need a "
            "workbench Metric that is a mean over prompts (LogitDiff, TokenLogProb, TokenProb, NextTokenLogProb, "
            "KLDivergence, ProbDiff)")


def _check_pos(pos: object) -> tuple[int | Tensor, tuple[int, ...]]:
    """`pos` (one position, or a [batch] tensor of non-negative positions, one per prompt) and the
    positions a metric reading there declares."""
    if isinstance(pos, Tensor):
        if pos.ndim != 1 or pos.dtype.is_floating_point or len(pos) == 0 or bool((pos < 0).any()):
            raise InputError("pos must be an int or a 1-D tensor of non-negative positions, one per prompt, got "
                             f"shape {tuple(pos.shape)}")
        return pos.long(), tuple(sorted(set(pos.tolist())))
    if isinstance(pos, bool) or not isinstance(pos, int):
        raise InputError(f"pos must be an int or a 1-D tensor of positions, got {type(pos).__name__}")
    return pos, (pos,)


def _at(logits: Float[Tensor, "*cell batch pos d_vocab"], pos: int | Tensor,
        positions: tuple[int, ...]) -> Float[Tensor, "*cell batch d_vocab"]:
    """The logits each prompt is read at: `logits` hold `positions` (in that order); with one
    position per prompt (`pos` a [batch] tensor), prompt b's is positions.index(pos[b])."""
    if not isinstance(pos, Tensor):
        return logits[..., 0, :]
    batch = logits.shape[-3]
    if pos.shape[0] != batch:
        raise InputError(f"pos has {pos.shape[0]} positions but the logits have batch size {batch}")
    slot = torch.tensor([positions.index(p) for p in pos.tolist()], device=logits.device)
    return logits[..., torch.arange(batch, device=logits.device), slot, :]


def _ids(*tokens: TokenIds) -> tuple[int, ...]:
    """The distinct ids among int / tensor token arguments, sorted."""
    ids = set()
    for t in tokens:
        ids |= {t} if isinstance(t, int) else set(t.tolist())
    return tuple(sorted(ids))


def _check_ids(token: object, what: str) -> TokenIds:
    if isinstance(token, Tensor):
        if token.ndim != 1 or token.dtype.is_floating_point:
            raise InputError(f"{what} must be an int or a 1-D tensor of token ids, got shape {tuple(token.shape)}")
        return token.long()
    if isinstance(token, bool) or not isinstance(token, int):
        raise InputError(f"{what} must be an int or a 1-D tensor of token ids, got {type(token).__name__}")
    return token


@dataclass(eq=False)
class LogitDiff(Metric):
    """Mean over the batch of logit[answer] - logit[wrong] at position `pos` (e.g. IOI: IO - S).

    `pos`: one position for every prompt, or a [batch] tensor with each prompt's (prompts of
    different lengths padded to one: `methods.datasets`)."""

    answer: TokenIds
    wrong: TokenIds
    _: KW_ONLY
    pos: int | Int[Tensor, "batch"] = -1
    name: str = "logit_diff"

    def __post_init__(self) -> None:
        self.answer, self.wrong = _check_ids(self.answer, "answer"), _check_ids(self.wrong, "wrong")
        self.pos, self.positions = _check_pos(self.pos)
        self.vocab = _ids(self.answer, self.wrong)

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        at = _at(logits, self.pos, self.positions)
        return _take(at, self.answer, "answer") - _take(at, self.wrong, "wrong")


@dataclass(eq=False)
class TokenLogProb(Metric):
    """Mean over the batch of log p(token) at position `pos`."""

    token: TokenIds
    _: KW_ONLY
    pos: int = -1
    name: str = "token_logprob"

    def __post_init__(self) -> None:
        self.token = _check_ids(self.token, "token")
        self.positions = (self.pos,)

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        return _take(logits[..., 0, :].float().log_softmax(-1), self.token, "token")


@dataclass(eq=False)
class TokenProb(TokenLogProb):
    """Mean over the batch of p(token) at position `pos`."""

    name: str = "token_prob"

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        return _take(logits[..., 0, :].float().softmax(-1), self.token, "token")


@dataclass(eq=False)
class NextTokenLogProb(Metric):
    """Mean over the batch and `positions` of log p(tokens[b, p + 1]) at position p: how well the
    model predicts the prompt's own next tokens there (e.g. the second copy of repeated tokens,
    which only an induction mechanism can predict).

    `tokens` [batch pos] are the ids whose continuations are scored (for patching, the clean
    prompts'); `positions` are non-negative and each < pos - 1."""

    tokens: Int[Tensor, "batch pos"]
    positions: tuple[int, ...]
    _: KW_ONLY
    name: str = "next_token_logprob"

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, Tensor) or self.tokens.ndim != 2 or self.tokens.dtype.is_floating_point:
            raise InputError("tokens must be a [batch pos] tensor of token ids")
        n_pos = self.tokens.shape[1]
        self.positions = tuple(int(p) for p in self.positions)
        if not self.positions or any(not 0 <= p < n_pos - 1 for p in self.positions):
            raise InputError(f"positions must be a non-empty list of positions in [0, {n_pos - 1}) (the next "
                             f"token must exist), got {list(self.positions)}")
        self._next = self.tokens[:, [p + 1 for p in self.positions]].long()  # [batch n_positions]

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        logprobs = logits.float().log_softmax(-1)
        if logprobs.shape[-3] != self._next.shape[0]:
            raise InputError(f"the metric scores {self._next.shape[0]} prompts but the logits have batch size "
                             f"{logprobs.shape[-3]}")
        index = self._next.to(logits.device).expand(*logprobs.shape[:-1])
        picked = logprobs.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # [*cell batch pos]
        return einops.reduce(picked, "... batch pos -> ... batch", "mean")


@dataclass(eq=False)
class KLDivergence(Metric):
    """Mean over the batch of KL(reference || model) at position `pos`, in nats.

    `reference_logits` are full logits [batch pos d_vocab] (e.g. the clean run's)."""

    reference_logits: Float[Tensor, "batch pos d_vocab"]
    _: KW_ONLY
    pos: int = -1
    name: str = "kl_divergence"

    def __post_init__(self) -> None:
        self.positions = (self.pos,)
        n_pos = self.reference_logits.shape[1]
        if not -n_pos <= self.pos < n_pos:
            raise InputError(f"pos {self.pos} is out of range for reference logits with {n_pos} positions")
        self._ref_logprobs = self.reference_logits[:, self.pos].detach().float().log_softmax(-1)

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        ref = self._ref_logprobs.to(logits.device)
        if ref.shape[0] != logits.shape[-3]:
            raise InputError(
                f"the reference logits have batch size {ref.shape[0]} but the logits have {logits.shape[-3]}"
            )
        logprobs = logits[..., 0, :].float().log_softmax(-1)
        return einops.reduce(ref.exp() * (ref - logprobs), "... batch d_vocab -> ... batch", "sum")


@dataclass(eq=False)
class ProbDiff(Metric):
    """Mean over the batch of p(above) - p(below) at position `pos`: the summed next-token
    probability (softmax over the whole vocabulary) of the ids marked in `above[b]` minus that of
    the ids marked in `below[b]`.

    The greater-than task (Hanna et al. 2023, "How does GPT-2 compute greater-than?"): for
    "... from the year 17YY to the year 17", above marks the two-digit year tokens > YY and below
    those <= YY (`methods.prompts.greater_than_prompts`). `above`, `below`: [batch d_vocab] bool
    masks of token ids."""

    above: Bool[Tensor, "batch d_vocab"]
    below: Bool[Tensor, "batch d_vocab"]
    _: KW_ONLY
    pos: int | Int[Tensor, "batch"] = -1
    name: str = "prob_diff"

    def __post_init__(self) -> None:
        for what in ("above", "below"):
            mask = getattr(self, what)
            if not isinstance(mask, Tensor) or mask.ndim != 2 or mask.dtype != torch.bool:
                raise InputError(f"{what} must be a [batch d_vocab] bool tensor marking token ids")
        if self.above.shape != self.below.shape:
            raise InputError(f"above and below have different shapes: {tuple(self.above.shape)} vs "
                             f"{tuple(self.below.shape)}")
        if bool((self.above & self.below).any()):
            raise InputError("a token id is marked both above and below for some prompt")
        self.pos, self.positions = _check_pos(self.pos)
        # vocab stays None: the softmax reads every logit, so sweeps must compute them all.

    def per_prompt(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell batch"]:
        if logits.shape[-1] != self.above.shape[-1] or logits.shape[-3] != self.above.shape[0]:
            raise InputError(f"the metric marks ids for [batch d_vocab] = {list(self.above.shape)} but the logits "
                             f"have batch {logits.shape[-3]} and d_vocab {logits.shape[-1]}")
        probs = _at(logits, self.pos, self.positions).float().softmax(-1)
        sign = self.above.float() - self.below.float()
        return einops.einsum(probs, sign.to(probs.device), "... batch d_vocab, batch d_vocab -> ... batch")


@dataclass(eq=False)
class CustomMetric(Metric):
    """Wraps a plain `fn(logits) -> scalar`. With `positions`, fn receives logits at just those
    positions ([batch len(positions) d_vocab]); otherwise the full logits. Sweeps call it once per
    cell."""

    fn: Callable[[Tensor], Tensor]
    _: KW_ONLY
    positions: tuple[int, ...] | None = None
    name: str = "custom"
    batched: bool = False

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise InputError(f"a metric must be callable, got {type(self.fn).__name__}")
        if self.name == "custom":
            self.name = getattr(self.fn, "__name__", "custom")
        if self.positions is not None:
            self.positions = tuple(int(p) for p in self.positions)

    def evaluate(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell"]:
        if logits.ndim == 3:
            return scalar(self.fn(logits), self.name)
        if logits.ndim != 4:
            raise InputError(f"{self.name}: expected logits [batch pos d_vocab] or [cell batch pos d_vocab], "
                             f"got shape {tuple(logits.shape)}")
        return torch.stack([scalar(self.fn(cell), self.name) for cell in logits])


@dataclass(eq=False)
class FoundReads(Metric):
    """A plain callable `fn(logits) -> scalar` together with what it was found to read
    (`find_reads`): `positions` (indices in [0, n_pos)) and `vocab` (None: every token id).
    `evaluate` takes logits at those positions ([*cell batch len(positions) d_vocab]; ids outside
    `vocab` may be anything) and calls fn once per cell on full-shaped logits [batch n_pos d_vocab]
    that hold them, with 0 at every other position and id."""

    fn: Callable[[Tensor], Tensor]
    n_pos: int
    _: KW_ONLY
    positions: tuple[int, ...] = ()
    vocab: tuple[int, ...] | None = None
    name: str = "custom"
    batched: bool = False
    # One zero buffer reused across cells (filling a fresh [batch n_pos d_vocab] tensor per cell would
    # cost more than the sweep); dropped if fn writes into it, which its version counter shows.
    _buffer: Tensor | None = field(default=None, init=False, repr=False)
    _version: int | None = field(default=None, init=False, repr=False)

    def evaluate(self, logits: Float[Tensor, "*cell batch pos d_vocab"]) -> Float[Tensor, "*cell"]:
        if logits.ndim == 3:
            return self._call(logits)
        if logits.ndim != 4:
            raise InputError(f"{self.name}: expected logits [batch pos d_vocab] or [cell batch pos d_vocab], "
                             f"got shape {tuple(logits.shape)}")
        return torch.stack([self._call(cell) for cell in logits])

    def _call(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        full = self._spread(logits)
        # clone: fn may return a view of its input, which the next cell overwrites
        value = scalar(self.fn(full), self.name).detach().clone()
        if _version_of(full) is None or _version_of(full) != self._version:
            self._buffer = None
        return value

    def _spread(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch _ d_vocab"]:
        shape = (logits.shape[0], self.n_pos, logits.shape[-1])
        buffer = self._buffer
        if buffer is None or buffer.shape != shape or buffer.dtype != logits.dtype or buffer.device != logits.device:
            buffer = logits.new_zeros(shape)
        pos = torch.tensor(self.positions, device=logits.device)
        if self.vocab is None:
            buffer[:, pos] = logits
        else:
            ids = torch.tensor(self.vocab, device=logits.device)
            buffer[:, pos[:, None], ids] = logits[:, :, ids]
        self._buffer, self._version = buffer, _version_of(buffer)
        return buffer


def _version_of(t: Tensor) -> int | None:
    """A tensor's in-place write counter (None for inference-mode tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class _Unsafe(Exception):
    """Why what a callable metric reads could not be established."""


def find_reads(metric: Metric, runs: Sequence[Float[Tensor, "batch pos d_vocab"]]) -> Metric:
    """For a plain callable (a `CustomMetric` that reads every position): a `FoundReads` that
    computes only the logits it reads; any other metric as is.

    `runs` are full logits of unpatched runs (the base run first, then e.g. the source run of a
    patching sweep). The candidates are the positions and token ids where the gradient of the
    metric with respect to the logits is nonzero on some run, then those positions with every id.
    A candidate is taken only if the metric's value is unchanged, on every run, when every logit
    outside it is replaced by 0 (what a sweep passes), by large positive and negative constants and
    by large noise, and when the logits it keeps are redrawn at random (`_unchanged`): a gradient
    that happens to be zero (a max, a threshold, an argmax) is caught that way. Where no candidate passes (or the metric has no
    gradient, or fails), it warns once and returns `metric` (every logit is then computed)."""
    if not isinstance(metric, CustomMetric) or metric.positions is not None or not runs:
        return metric
    try:
        positions, vocab = _reads(metric, runs)
    except _Unsafe as reason:
        warnings.warn(f"could not establish which logits the metric {metric.name!r} reads ({reason}); computing "
                      "the logits at every position and token id for each cell, which is slower. Pass a Metric "
                      "(e.g. LogitDiff) to make it fast.", stacklevel=4)
        return metric
    return FoundReads(metric.fn, runs[0].shape[1], positions=positions, vocab=vocab, name=metric.name)


def _reads(metric: CustomMetric, runs: Sequence[Tensor]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    grads = []
    for logits in runs:
        try:
            # Sweeps run under no_grad (or a caller's inference_mode): the gradient needs both off.
            with torch.inference_mode(False), torch.enable_grad():
                x = logits.detach().clone().requires_grad_(True)
                value = scalar(metric.fn(x), metric.name)
                if value.grad_fn is None:
                    raise _Unsafe("its value has no gradient with respect to the logits, e.g. it uses argmax "
                                  "or .item()")
                if not torch.isfinite(value):
                    raise _Unsafe("its value on an unpatched run is not finite")
                (grad,) = torch.autograd.grad(value, x, allow_unused=True)
        except _Unsafe:
            raise
        except Exception as error:  # noqa: BLE001 - any failure means: do not narrow
            raise _Unsafe(f"evaluating it for its gradient failed: {type(error).__name__}: {error}") from None
        if grad is None:
            raise _Unsafe("its value does not depend on the logits through autograd")
        grads.append(grad != 0)
    read = grads[0].any(0)  # [pos d_vocab]
    for grad in grads[1:]:
        read |= grad.any(0)
    positions = read.any(-1).nonzero().flatten().tolist()
    if not positions:
        raise _Unsafe("its gradient is zero at every logit")
    d_vocab = read.shape[-1]
    vocab = read[positions].any(0).nonzero().flatten().tolist()
    candidates = [(tuple(positions), tuple(vocab))] if len(vocab) <= d_vocab // 2 else []
    candidates.append((tuple(positions), None))
    for pos, ids in candidates:
        if _unchanged(metric, runs, pos, ids):
            return pos, ids
    raise _Unsafe("its value changes with logits outside the positions where its gradient is nonzero")


def _unchanged(metric: CustomMetric, runs: Sequence[Tensor], positions: tuple[int, ...],
               vocab: tuple[int, ...] | None) -> bool:
    """Whether metric(logits) stays the same whatever fills the logits outside `positions` x
    `vocab`: on every run (filled with 0, +-big constants, big noise), and on the base run with the
    kept logits redrawn at random within each row's range (filled with 0), which moves a max or
    argmax among the kept ids across the others. Evidence, not proof: a metric that reads a logit only beyond 1000x the largest logit of these runs, or
    through a branch none of them takes, would pass."""
    n_pos, d_vocab = runs[0].shape[1:]
    kept = torch.zeros(n_pos, d_vocab, dtype=torch.bool, device=runs[0].device)
    pos = torch.tensor(positions, device=kept.device)
    if vocab is None:
        kept[pos] = True
    else:
        kept[pos[:, None], torch.tensor(vocab, device=kept.device)] = True
    generator = torch.Generator(device=kept.device).manual_seed(0)
    base = runs[0]
    # Far beyond any logit a patched run can reach (a threshold there would go unnoticed), but
    # finite in the logits' dtype and when squared.
    big = min(1e3 * (float(max(r.abs().max() for r in runs)) + 1), torch.finfo(base.dtype).max ** 0.5)
    noise = torch.randn(base.shape, generator=generator, device=base.device).to(base.dtype) * big
    lo, hi = base.amin(-1, keepdim=True), base.amax(-1, keepdim=True)
    checks = []  # (logits, fills)
    for logits in runs:
        checks.append((logits, [0.0, big, -big, noise if noise.shape == logits.shape else 0.0]))
    for _ in range(_REDRAWS):
        redrawn = torch.rand(base.shape, generator=generator, device=base.device).to(base.dtype)
        checks.append((torch.where(kept, lo + (hi - lo) * redrawn, base), [0.0]))
    # One buffer for every call (fresh full-size tensors cost more than the metric); each value is
    # copied out before the buffer is written again.
    buffer = torch.empty_like(base)

    def value_on(logits: Tensor, fill: Tensor | float | None) -> Tensor:
        x = buffer if buffer.shape == logits.shape else torch.empty_like(logits)
        if fill is None:
            x.copy_(logits)
        else:
            torch.where(kept, logits, torch.as_tensor(fill, dtype=x.dtype, device=x.device), out=x)
        return scalar(metric.fn(x), metric.name).detach().float().clone()

    try:
        with torch.no_grad():
            for logits, fills in checks:
                expected = value_on(logits, None)
                for fill in fills:
                    if not torch.isclose(value_on(logits, fill), expected, rtol=1e-5, atol=1e-6):
                        return False
    except Exception:  # noqa: BLE001 - e.g. it cannot take the fills: do not narrow
        return False
    return True


# Random redraws of the kept logits in the check above (each costs two calls of the metric).
_REDRAWS = 4


def scalar(value: object, name: str = "metric") -> Tensor:
    """Check that a metric returned a scalar (a 0-d tensor or a number) and return it as a tensor."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, Tensor):
        raise InputError(f"metric {name!r} must return a scalar tensor, got {type(value).__name__}")
    if value.ndim != 0:
        raise InputError(
            f"metric {name!r} must return a scalar, got a tensor of shape {tuple(value.shape)}; "
            "reduce over the batch (e.g. .mean())"
        )
    return value.reshape(())


def as_metric(metric: object) -> Metric:
    """A `Metric` as is; a plain callable wrapped in `CustomMetric` (reads every position, until a
    sweep finds what it reads: `find_reads`)."""
    if isinstance(metric, Metric):
        return metric
    if not callable(metric):
        raise InputError(f"metric must be a Metric or a callable logits -> scalar, got {type(metric).__name__}")
    return CustomMetric(metric)


# ---------------------------------------------------------------------- functions


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"], answer: TokenIds, wrong: TokenIds, *, pos: int = -1
) -> Float[Tensor, ""]:
    """Mean over the batch of logits[b, pos, answer[b]] - logits[b, pos, wrong[b]].

    `answer` and `wrong` are one token id or a [batch] tensor of ids."""
    return LogitDiff(answer, wrong, pos=pos)(logits)


def token_logprob(logits: Float[Tensor, "batch pos d_vocab"], token: TokenIds, *, pos: int = -1) -> Float[Tensor, ""]:
    """Mean over the batch of log p(token) at `pos`."""
    return TokenLogProb(token, pos=pos)(logits)


def token_prob(logits: Float[Tensor, "batch pos d_vocab"], token: TokenIds, *, pos: int = -1) -> Float[Tensor, ""]:
    """Mean over the batch of p(token) at `pos`."""
    return TokenProb(token, pos=pos)(logits)


def kl_divergence(
    logits: Float[Tensor, "batch pos d_vocab"], reference_logits: Float[Tensor, "batch pos d_vocab"], *, pos: int = -1
) -> Float[Tensor, ""]:
    """Mean over the batch of KL(reference || logits) of the next-token distributions at `pos`."""
    return KLDivergence(reference_logits, pos=pos)(logits)


# How much better the clean run must score than the corrupted one for the prompts to show the
# behaviour, in the metric's units: logits for a logit difference (0.5: odds of answer over wrong
# 1.65 times higher), nats for a log-probability (a 1.65 times higher probability). Below it,
# normalising by clean - corrupted divides by noise.
MIN_GAP = 0.5


def clean_beats_corrupted(clean: float, corrupted: float, *, min_gap: float = MIN_GAP) -> bool:
    """Whether the clean run is clearly better than the corrupted one on a metric where higher is
    better (logit difference, log-probability): clean - corrupted >= `min_gap`."""
    return float(clean) - float(corrupted) >= min_gap


def no_signal_message(clean: float, corrupted: float, metric: str, *, min_gap: float = MIN_GAP) -> str | None:
    """None when the clean run clearly beats the corrupted one, else a sentence saying it does not."""
    if clean_beats_corrupted(clean, corrupted, min_gap=min_gap):
        return None
    return (f"The clean run is not clearly better than the corrupted one on {metric} (clean {clean:.3f}, corrupted "
            f"{corrupted:.3f}; needs a gap of at least {min_gap}): the model does not show this behaviour on these "
            "prompts, so normalised values divide by noise. Try a task this model can do (e.g. the induction preset "
            "on a small model).")


def normalize(values: Tensor | float, clean: Tensor | float, corrupted: Tensor | float) -> Tensor:
    """Rescale metric values so that 0 = the corrupted run's value and 1 = the clean run's."""
    clean, corrupted = torch.as_tensor(clean, dtype=torch.float32), torch.as_tensor(corrupted, dtype=torch.float32)
    if torch.any(clean == corrupted):
        raise InputError(
            f"cannot normalize: the clean and corrupted metric are equal ({float(clean.flatten()[0]):.6g}), "
            "so the prompts do not separate the behaviour"
        )
    return (torch.as_tensor(values).float() - corrupted) / (clean - corrupted)
