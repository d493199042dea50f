"""Prompt generators: repeated random tokens and the induction task built on them, IOI (Wang et al.
2022) and greater-than (Hanna et al. 2023). `methods.datasets.PromptSet` holds any of them, or prompts
read from a file, as one kind of object."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from workbench.errors import InputError
from workbench.methods.metrics import LogitDiff, NextTokenLogProb, ProbDiff
from workbench.models.tokenizer import EOT_ID, gpt2_tokenizer


def repeated_tokens(
    *,
    n_seqs: int = 8,
    seq_len: int = 20,
    seed: int = 0,
    vocab: Tensor | None = None,
    vocab_size: int = 50257,
    prepend_bos: bool = True,
) -> Int[Tensor, "batch pos"]:
    """[BOS] + r + r for `n_seqs` random sequences r of `seq_len` distinct tokens (seeded).

    Tokens are drawn from `vocab` (a 1-D tensor of ids) when given, otherwise from
    [0, vocab_size - 1) (never the <|endoftext|> id). Shape [n_seqs, 2 seq_len (+1 with BOS)]."""
    if n_seqs < 1 or seq_len < 2:
        raise InputError(f"need n_seqs >= 1 and seq_len >= 2, got n_seqs={n_seqs}, seq_len={seq_len}")
    pool = torch.arange(vocab_size - 1) if vocab is None else torch.as_tensor(vocab).flatten()
    pool = pool[pool != EOT_ID]
    if pool.numel() < seq_len:
        raise InputError(f"the token pool has {pool.numel()} ids, fewer than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    rows = [pool[torch.randperm(pool.numel(), generator=g)[:seq_len]] for _ in range(n_seqs)]
    half = torch.stack(rows)
    parts = [torch.full((n_seqs, 1), EOT_ID)] if prepend_bos else []
    return torch.cat(parts + [half, half], dim=1)


@dataclass
class InductionPrompts:
    """The induction task as clean/corrupted pairs: clean = [BOS] + r + r, corrupted = [BOS] + r' + r
    with r' a different random first copy (drawn independently of r).
    Both runs end with the same second copy r, but only the clean run has seen it before: a model
    with an induction head predicts the second copy's next tokens from the first.

    clean_tokens, corrupted_tokens: [batch pos], pos = 2 seq_len (+1 with BOS). `positions` are the
    second copy's positions whose next token is in the second copy too (its first seq_len - 1
    tokens); `metric()` is the mean log-probability of the correct next token there."""

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    seq_len: int
    positions: tuple[int, ...]

    def metric(self) -> NextTokenLogProb:
        """Mean over prompts and `positions` of log p(correct next token): [BOS] + r + r is scored on
        its second copy, whose next tokens are the same in the clean and corrupted prompts."""
        return NextTokenLogProb(self.clean_tokens, self.positions)


def induction_positions(seq_len: int, *, prepend_bos: bool = True) -> tuple[int, ...]:
    """The positions of [BOS] + r + r (r of `seq_len` tokens) where the next token is predictable by
    induction: the second copy's first seq_len - 1 tokens."""
    start = seq_len + int(prepend_bos)
    return tuple(range(start, start + seq_len - 1))


def induction_prompts(
    *,
    n: int = 8,
    seq_len: int = 10,
    seed: int = 0,
    vocab: Tensor | None = None,
    vocab_size: int = 50257,
    prepend_bos: bool = True,
) -> InductionPrompts:
    """`n` induction pairs (see `InductionPrompts`) of random tokens drawn as in `repeated_tokens`
    (seeded): clean [BOS] + r + r and corrupted [BOS] + r' + r."""
    clean = repeated_tokens(n_seqs=n, seq_len=seq_len, seed=seed, vocab=vocab, vocab_size=vocab_size,
                            prepend_bos=prepend_bos)
    # r' from another seed's draw: independent of r, so the first copy tells nothing about the second.
    other = repeated_tokens(n_seqs=n, seq_len=seq_len, seed=seed + 1_000_003, vocab=vocab, vocab_size=vocab_size,
                            prepend_bos=prepend_bos)
    start = int(prepend_bos)
    corrupted = torch.cat([clean[:, :start], other[:, start:start + seq_len], clean[:, start + seq_len:]], dim=1)
    return InductionPrompts(clean, corrupted, seq_len, induction_positions(seq_len, prepend_bos=prepend_bos))


# ---------------------------------------------------------------------- IOI (Wang et al. 2022)

# The BABA templates of Wang et al. 2022 ("Interpretability in the Wild"); [A] is the indirect
# object (the answer), [B] the subject. The ABBA form swaps the first two names.
IOI_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)
# Each is a single GPT-2 token after a space (tests/test_methods_prompts.py checks).
IOI_NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel", "David",
    "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah", "William",
    "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam",
    "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren",
    "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean",
    "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela", "Tyler", "Scott",
    "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen",
    "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)
IOI_PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
IOI_OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
IOI_CORRUPTIONS = ("abc", "swap", "s2_io")
IOI_ORDERS = ("mixed", "ABBA", "BABA")


@dataclass
class IOIPrompts:
    """IOI prompts ending just before the indirect object, and their corrupted twins.

    clean_tokens, corrupted_tokens: [batch pos], same shape (one template per set, so positions
    line up across the batch). answer[b] is the indirect object's token id, wrong[b] the
    subject's: `logit_diff(logits, prompts.answer, prompts.wrong)` is the IOI logit difference.
    `order[b]` is "ABBA" or "BABA"; `names[b]` is (IO, S) of the clean prompt."""

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    answer: Int[Tensor, "batch"]
    wrong: Int[Tensor, "batch"]
    clean_text: list[str]
    corrupted_text: list[str]
    order: list[str]
    names: list[tuple[str, str]]
    template: str
    corruption: str

    def metric(self, *, pos: int = -1) -> LogitDiff:
        """The IOI logit difference as a sweep metric (`LogitDiff(answer, wrong)`)."""
        return LogitDiff(self.answer, self.wrong, pos=pos)

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: batch, clean/corrupted text, order, io/s names and answer/wrong ids."""
        return pd.DataFrame({
            "batch": range(len(self.clean_text)),
            "clean": self.clean_text,
            "corrupted": self.corrupted_text,
            "order": self.order,
            "io": [io for io, _ in self.names],
            "s": [s for _, s in self.names],
            "answer": self.answer.tolist(),
            "wrong": self.wrong.tolist(),
            "template": self.template,
            "corruption": self.corruption,
        })


def ioi_prompts(
    *,
    n: int = 8,
    template: int | str = 0,
    order: str = "mixed",
    corruption: str = "abc",
    seed: int = 0,
    prepend_bos: bool = True,
) -> IOIPrompts:
    """`n` IOI prompts (Wang et al. 2022) from one template, with random single-token names,
    place and object (seeded), and a corrupted version of each.

    `template`: an index into `IOI_TEMPLATES` or a template string in the same [A]/[B]/[PLACE]/
    [OBJECT] form (BABA order, ending with [A]). `order`: "ABBA", "BABA" or "mixed" (alternating).
    `corruption`: "abc" replaces all three names by three other names (Wang et al.'s ABC
    distribution: no name is repeated, so there is no IO to find); "swap" exchanges IO and S
    everywhere (the answer becomes the wrong name); "s2_io" replaces the second S by the IO.
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if isinstance(template, int):
        if not 0 <= template < len(IOI_TEMPLATES):
            raise InputError(f"template index {template} is out of range: there are {len(IOI_TEMPLATES)} templates")
        template = IOI_TEMPLATES[template]
    if not template.endswith("[A]") or template.count("[A]") != 2 or template.count("[B]") != 2 \
            or "[B] and [A]" not in template:
        raise InputError('an IOI template has "[B] and [A]", then [B] again, and ends with [A], e.g. '
                         + repr(IOI_TEMPLATES[0]))
    if order not in IOI_ORDERS:
        raise InputError(f"order must be one of {IOI_ORDERS}, got {order!r}")
    if corruption not in IOI_CORRUPTIONS:
        raise InputError(f"corruption must be one of {IOI_CORRUPTIONS}, got {corruption!r}")
    enc = gpt2_tokenizer()
    g = torch.Generator().manual_seed(seed)
    pick = lambda pool, k: [pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist()]  # noqa: E731
    prompt = template.removesuffix("[A]").rstrip()
    clean_text, corrupted_text, orders, names = [], [], [], []
    for i in range(n):
        io, s, c, d, e = pick(IOI_NAMES, 5)
        place, obj = pick(IOI_PLACES, 1)[0], pick(IOI_OBJECTS, 1)[0]
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)
        first_two = ("[A]", "[B]") if abba else ("[B]", "[A]")
        # name slots in order of appearance: first, second, S2
        slots = [*first_two, "[B]"]
        fill = {"[A]": io, "[B]": s}
        clean_names = [fill[x] for x in slots]
        if corruption == "abc":
            bad_names = [c, d, e]
        elif corruption == "swap":
            bad_names = [{io: s, s: io}[x] for x in clean_names]
        else:  # s2_io
            bad_names = clean_names[:2] + [io]
        skeleton = prompt.replace("[B] and [A]", "{0} and {1}", 1).replace("[B]", "{2}", 1)
        skeleton = skeleton.replace("[PLACE]", place).replace("[OBJECT]", obj)
        clean_text.append(skeleton.format(*clean_names))
        corrupted_text.append(skeleton.format(*bad_names))
        orders.append("ABBA" if abba else "BABA")
        names.append((io, s))

    def encode(texts: list[str]) -> Tensor:
        ids = [([EOT_ID] if prepend_bos else []) + enc.encode(t) for t in texts]
        if len({len(x) for x in ids}) != 1:
            raise InputError("the template's prompts tokenize to different lengths; use single-token fillers")
        return torch.tensor(ids, dtype=torch.long)

    clean_tokens, corrupted_tokens = encode(clean_text), encode(corrupted_text)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise InputError("clean and corrupted IOI prompts tokenize to different lengths")
    answer = torch.tensor([enc.encode(" " + io)[0] for io, _ in names])
    wrong = torch.tensor([enc.encode(" " + s)[0] for _, s in names])
    return IOIPrompts(clean_tokens, corrupted_tokens, answer, wrong, clean_text, corrupted_text, orders, names,
                      template, corruption)


# ---------------------------------------------------------------------- greater-than (Hanna et al. 2023)

# The nouns of Hanna et al. 2023 ("How does GPT-2 compute greater-than?"), each one GPT-2 token
# after a space (tests/test_datasets.py checks).
GREATER_THAN_NOUNS = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
    "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
    "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
    "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
    "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment", "endeavor",
    "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
    "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness", "impact",
    "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion", "investigation",
    "journey", "kingdom", "marriage", "modernization", "negotiation", "notoriety", "obstruction", "operation",
    "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
    "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
    "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
    "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition",
    "treaty", "trial", "trip", "unemployment", "voyage", "war", "warfare", "work",
)
GREATER_THAN_TEMPLATE = "The {noun} lasted from the year {century}{yy} to the year {century}"
# Two-digit endings YY the paper samples: " 17YY" must be the two tokens " 17" + "YY", and the first
# and last such year of a century are left out (1700 is one token; 1701 and 1799 are the ends),
# so that some year is always above and some below. "01" is the corrupted prompt's year.
GREATER_THAN_YEARS = tuple(range(2, 99))
GREATER_THAN_CORRUPTED_YY = 1


@dataclass
class GreaterThanPrompts:
    """Greater-than prompts (Hanna et al. 2023): clean "The war lasted from the year 17YY to the
    year 17", corrupted the same with YY = 01 (where no year below is possible).

    clean_tokens, corrupted_tokens: [batch pos]. `years[b]` is YY of prompt b; `year_ids[k]` the
    token id of the two-digit string k ("00" ... "99", `greater_than_year_ids`). `metric()` is the probability difference
    PD = sum_{y > YY} p(y) - sum_{y <= YY} p(y) over the two-digit year tokens at the last position."""

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    years: list[int]
    year_ids: list[int]
    clean_text: list[str]
    corrupted_text: list[str]
    nouns: list[str]
    century: int

    def metric(self, *, d_vocab: int = 50257) -> ProbDiff:
        """prob(year > YY) - prob(year <= YY) at the last position (`ProbDiff`)."""
        return greater_than_metric(self.years, d_vocab=d_vocab)

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: batch, clean/corrupted text, noun, yy."""
        return pd.DataFrame({"batch": range(len(self.years)), "clean": self.clean_text,
                             "corrupted": self.corrupted_text, "noun": self.nouns, "yy": self.years})


def greater_than_year_ids() -> list[int]:
    """The GPT-2 token id of each two-digit year "00" ... "99" (index k: the year k)."""
    enc = gpt2_tokenizer()
    ids = [enc.encode(f"{k:02d}") for k in range(100)]
    if any(len(x) != 1 for x in ids):
        raise InputError("the tokenizer does not have one token for each two-digit year 00 ... 99")
    return [x[0] for x in ids]


def greater_than_metric(years: list[int], *, d_vocab: int = 50257, pos: int | Tensor = -1) -> ProbDiff:
    """Hanna et al.'s probability difference for prompts ending "... 17YY to the year 17" with
    YY = years[b]: p(a two-digit year token > YY) - p(one <= YY), at `pos`."""
    ids = torch.tensor(greater_than_year_ids())
    yy = torch.tensor(list(years))[:, None]
    above = torch.zeros(len(years), d_vocab, dtype=torch.bool)
    below = torch.zeros_like(above)
    above[:, ids] = torch.arange(100)[None, :] > yy
    below[:, ids] = torch.arange(100)[None, :] <= yy
    return ProbDiff(above, below, pos=pos)


def greater_than_prompts(*, n: int = 8, century: int = 17, seed: int = 0, prepend_bos: bool = True) -> GreaterThanPrompts:
    """`n` greater-than prompts with random nouns (`GREATER_THAN_NOUNS`) and years YY drawn from
    `GREATER_THAN_YEARS` (02 to 98, seeded), and their "01" corruptions (see `GreaterThanPrompts`).

    `century`: XX of the years XXYY; " XXYY" must tokenize as " XX" + "YY" for every YY used
    (GPT-2's tokenizer does so for 11 to 17)."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    enc = gpt2_tokenizer()
    year_ids = greater_than_year_ids()
    g = torch.Generator().manual_seed(seed)
    nouns = [GREATER_THAN_NOUNS[i] for i in torch.randint(len(GREATER_THAN_NOUNS), (n,), generator=g).tolist()]
    years = [GREATER_THAN_YEARS[i] for i in torch.randint(len(GREATER_THAN_YEARS), (n,), generator=g).tolist()]
    clean_text = [GREATER_THAN_TEMPLATE.format(noun=w, century=century, yy=f"{y:02d}") for w, y in zip(nouns, years)]
    corrupted_text = [GREATER_THAN_TEMPLATE.format(noun=w, century=century, yy=f"{GREATER_THAN_CORRUPTED_YY:02d}")
                      for w in nouns]
    bos = [EOT_ID] if prepend_bos else []
    clean = [bos + enc.encode(t) for t in clean_text]
    corrupted = [bos + enc.encode(t) for t in corrupted_text]
    century_id = enc.encode(f" {century}")
    for text, ids in zip(clean_text + corrupted_text, clean + corrupted):
        start = len(bos) + len(enc.encode(text.split(" lasted")[0])) + 4  # "The noun" + " lasted from the year"
        if len(century_id) != 1 or ids[start:start + 1] != century_id or len(ids) != len(clean[0]):
            raise InputError(f"{text!r} does not tokenize as the template expects (year as ' {century}' + 'YY'); "
                             "GPT-2's tokenizer does for centuries 11 to 17")
    return GreaterThanPrompts(torch.tensor(clean), torch.tensor(corrupted), years, year_ids,
                              clean_text, corrupted_text, nouns, century)
