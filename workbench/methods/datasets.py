"""Prompt datasets: clean/corrupted prompt pairs with the tokens their metric reads, from a file
(JSONL, CSV, Parquet), a Hugging Face `datasets` dataset, or the built-in generators
(`methods.prompts`: IOI, repeated random tokens, greater-than).

A file has one prompt pair per row (JSONL: one JSON object per line; CSV: a header row; Parquet:
columns). Fields:

    clean / clean_ids          the clean prompt, as text or as token ids (BOS added to text when asked)
    corrupted / corrupted_ids  its corrupted twin, the same number of tokens
    answer / answer_id         the correct next token of the clean prompt (one token, e.g. " Mary")
    wrong / wrong_id           the wrong next token (the metric is the logit difference answer - wrong)
    group, template            optional labels; results are also reported per group (group, else template)

In CSV, ids are written as integers separated by spaces. Rows are named by their number among the
data rows, counting from 1 (a JSONL file's line, a CSV file's line after the header).

Prompts of different lengths are never cut: `PromptSet.batch` refuses them (`length_rule="error"`,
naming the first row that differs from row 1), pads them on the right and reads each at its own last
position (`"pad"`), or `PromptSet.by_length` splits them into sets of one length. Every pair must
have equal clean and corrupted lengths (patching swaps activations position by position).

Rows are independent, so a set splits by rows (`PromptSet.rows`, `PromptSet.shard`) and the
per-prompt results of the parts concatenate.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.errors import InputError
from workbench.methods.metrics import LogitDiff, Metric, NextTokenLogProb
from workbench.methods.prompts import (
    GreaterThanPrompts,
    greater_than_metric,
    greater_than_prompts,
    induction_prompts,
    ioi_prompts,
)
from workbench.models.tokenizer import EOT_ID

FORMATS = ("jsonl", "csv", "parquet")
LENGTH_RULES = ("error", "pad")
TASKS = ("logit_diff", "next_token_logprob", "prob_diff")
FIELDS = {"clean": "clean_ids", "corrupted": "corrupted_ids", "answer": "answer_id", "wrong": "wrong_id"}
LABELS = ("group", "template")
PAD_ID = EOT_ID  # right padding; never read (each prompt is read at its own last position)


@dataclass
class PromptBatch:
    """A `PromptSet` as model inputs: clean and corrupted [batch pos] (right-padded when the rule
    is "pad"), each prompt's read position `read_pos` [batch] (its last token), and the set's metric."""

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    read_pos: Int[Tensor, "batch"]
    metric: Metric
    groups: list[str] | None


@dataclass
class PromptSet:
    """Clean/corrupted prompt pairs, one row per prompt, with what the task's metric reads.

    `clean[i]`, `corrupted[i]`: token ids (BOS included when the set has one), equal lengths per
    pair. `task` says which metric: "logit_diff" (logit[answer[i]] - logit[wrong[i]] at the last
    position), "next_token_logprob" (induction: log p of each next token at `positions`) or
    "prob_diff" (greater-than: p(year > yy[i]) - p(year <= yy[i]) over the year tokens "00".."99").
    `groups[i]`: the label results are also reported by (None: one group). `source` names where the
    rows came from, for messages."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    task: str = "logit_diff"
    answer: list[int] | None = None
    wrong: list[int] | None = None
    groups: list[str] | None = None
    positions: tuple[int, ...] | None = None
    yy: list[int] | None = None
    source: str = "prompts"
    row_numbers: list[int] = field(default_factory=list)  # each row's number in its source (from 1)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        if not self.clean:
            raise InputError(f"{self.source} holds no prompts")
        if not self.row_numbers:
            self.row_numbers = list(range(1, len(self.clean) + 1))
        per_row = {"corrupted": self.corrupted, "answer": self.answer, "wrong": self.wrong, "groups": self.groups,
                   "yy": self.yy, "row_numbers": self.row_numbers}
        for name, values in per_row.items():
            if values is not None and len(values) != len(self.clean):
                raise InputError(f"{self.source}: {len(self.clean)} clean prompts but {len(values)} {name}")
        needs = {"logit_diff": ("answer", "wrong"), "next_token_logprob": ("positions",), "prob_diff": ("yy",)}
        for name in needs[self.task]:
            if getattr(self, name) is None:
                raise InputError(f"a {self.task} prompt set needs {name}")
        for i, (a, b) in enumerate(zip(self.clean, self.corrupted)):
            if len(a) != len(b):
                raise InputError(f"{self.where(i)}: the clean prompt is {len(a)} tokens and the corrupted one {len(b)}; "
                                 "patching swaps activations position by position, so each pair must have one length")

    def __len__(self) -> int:
        return len(self.clean)

    def where(self, i: int) -> str:
        """How messages name row i ("prompts.jsonl row 3")."""
        return f"{self.source} row {self.row_numbers[i]}"

    # ------------------------------------------------------------------ splitting by rows
    def rows(self, index: Sequence[int] | slice) -> PromptSet:
        """The set of the given rows (in that order)."""
        picked = list(range(len(self)))[index] if isinstance(index, slice) else [int(i) for i in index]
        take = lambda xs: None if xs is None else [xs[i] for i in picked]  # noqa: E731
        return replace(self, clean=take(self.clean), corrupted=take(self.corrupted), answer=take(self.answer),
                       wrong=take(self.wrong), groups=take(self.groups), yy=take(self.yy),
                       row_numbers=take(self.row_numbers))

    def shard(self, rank: int, world_size: int) -> PromptSet:
        """The `rank`-th of `world_size` contiguous parts (sizes differ by at most one)."""
        if not 0 <= rank < world_size:
            raise InputError(f"rank must be in [0, {world_size}), got {rank}")
        n = len(self)
        start, stop = rank * n // world_size, (rank + 1) * n // world_size
        return self.rows(slice(start, stop))

    def lengths(self) -> list[int]:
        return [len(x) for x in self.clean]

    def by_length(self) -> dict[int, PromptSet]:
        """One set per prompt length (rows in their original order within each)."""
        out: dict[int, list[int]] = {}
        for i, n in enumerate(self.lengths()):
            out.setdefault(n, []).append(i)
        return {n: self.rows(rows) for n, rows in sorted(out.items())}

    # ------------------------------------------------------------------ model inputs
    def batch(self, *, length_rule: str = "error", d_vocab: int = 50257) -> PromptBatch:
        """The prompts as [batch pos] tensors and the task's metric (see the module docstring for
        `length_rule`; `d_vocab` is the model's, for the greater-than metric)."""
        if length_rule not in LENGTH_RULES:
            raise InputError(f"length_rule must be one of {', '.join(LENGTH_RULES)}, got {length_rule!r}")
        lengths = self.lengths()
        differs = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
        if differs is not None and (length_rule == "error" or self.task == "next_token_logprob"):
            raise InputError(
                f"{self.where(differs)} is {lengths[differs]} tokens but {self.where(0)} is {lengths[0]}: prompts of "
                "different lengths need a rule: length_rule='pad' (right-padded, each read at its own last token) or "
                "PromptSet.by_length() (one set per length); induction sets must have one length")
        n_pos = max(lengths)
        pad = lambda rows: torch.tensor([r + [PAD_ID] * (n_pos - len(r)) for r in rows])  # noqa: E731
        read_pos = torch.tensor([n - 1 for n in lengths])
        clean, corrupted = pad(self.clean), pad(self.corrupted)
        pos: int | Tensor = -1 if differs is None else read_pos
        if self.task == "logit_diff":
            metric: Metric = LogitDiff(torch.tensor(self.answer), torch.tensor(self.wrong), pos=pos)
        elif self.task == "next_token_logprob":
            metric = NextTokenLogProb(clean, self.positions)
        else:
            metric = greater_than_metric(self.yy, d_vocab=d_vocab, pos=pos)
        return PromptBatch(clean, corrupted, read_pos, metric, self.groups)

    # ------------------------------------------------------------------ generators
    @classmethod
    def ioi(cls, *, n: int = 8, templates: Sequence[int | str] = (0,), order: str = "mixed", corruption: str = "abc",
            seed: int = 0, prepend_bos: bool = True) -> PromptSet:
        """`n` IOI prompts per template (`methods.prompts.ioi_prompts`; corruption "abc" is Wang et
        al.'s ABC distribution), grouped by template index."""
        clean, corrupted, answer, wrong, groups = [], [], [], [], []
        for k, template in enumerate(templates):
            p = ioi_prompts(n=n, template=template, order=order, corruption=corruption, seed=seed + k,
                            prepend_bos=prepend_bos)
            clean += p.clean_tokens.tolist()
            corrupted += p.corrupted_tokens.tolist()
            answer += p.answer.tolist()
            wrong += p.wrong.tolist()
            groups += [f"template {template}" if isinstance(template, int) else p.template] * n
        return cls(clean, corrupted, "logit_diff", answer, wrong, groups if len(templates) > 1 else None,
                   source="IOI prompts")

    @classmethod
    def induction(cls, *, n: int = 8, seq_len: int = 10, seed: int = 0, vocab_size: int = 50257,
                  prepend_bos: bool = True) -> PromptSet:
        """Repeated random tokens (`methods.prompts.induction_prompts`)."""
        p = induction_prompts(n=n, seq_len=seq_len, seed=seed, vocab_size=vocab_size, prepend_bos=prepend_bos)
        return cls(p.clean_tokens.tolist(), p.corrupted_tokens.tolist(), "next_token_logprob",
                   positions=p.positions, source="induction prompts")

    @classmethod
    def greater_than(cls, *, n: int = 8, century: int = 17, seed: int = 0, prepend_bos: bool = True) -> PromptSet:
        """Greater-than prompts and their "01" corruptions (`methods.prompts.greater_than_prompts`)."""
        return cls.from_greater_than(greater_than_prompts(n=n, century=century, seed=seed, prepend_bos=prepend_bos))

    @classmethod
    def from_greater_than(cls, p: GreaterThanPrompts) -> PromptSet:
        return cls(p.clean_tokens.tolist(), p.corrupted_tokens.tolist(), "prob_diff", yy=list(p.years),
                   source="greater-than prompts")

    # ------------------------------------------------------------------ rows (files, datasets, inline)
    @classmethod
    def from_records(cls, records: Iterable[Mapping], model, *, prepend_bos: bool = True,
                     source: str = "prompts") -> PromptSet:
        """Prompt pairs from rows of the fields in the module docstring; text is tokenized by `model`
        (its `to_tokens` / `to_single_token`). Errors name the row."""
        clean, corrupted, answer, wrong, labels = [], [], [], [], []
        for i, record in enumerate(records):
            where = f"{source} row {i + 1}"
            if not isinstance(record, Mapping):
                raise InputError(f"{where} is not an object of fields ({', '.join(FIELDS)})")
            clean.append(_prompt(record, "clean", model, prepend_bos, where))
            corrupted.append(_prompt(record, "corrupted", model, prepend_bos, where))
            answer.append(_token(record, "answer", model, where))
            wrong.append(_token(record, "wrong", model, where))
            label = next((record[k] for k in LABELS if _given(record.get(k))), None)
            labels.append(None if label is None else str(label))
        if not clean:
            raise InputError(f"{source} holds no prompts")
        given = [x is not None for x in labels]
        if any(given) and not all(given):
            i = given.index(not given[0])
            raise InputError(f"{source} row {i + 1} has no group label but row 1 {'has' if given[0] else 'has none'}: "
                             "give a group (or template) label on every row or on none")
        return cls(clean, corrupted, "logit_diff", answer, wrong, labels if all(given) else None, source=source)

    @classmethod
    def read(cls, path: str | Path, model, *, prepend_bos: bool = True) -> PromptSet:
        """Prompt pairs from a JSONL, CSV or Parquet file (by its suffix; see the module docstring)."""
        path = Path(path)
        return cls.from_records(read_records(path), model, prepend_bos=prepend_bos, source=path.name)

    @classmethod
    def from_hf(cls, dataset, model, *, split: str | None = None, columns: Mapping[str, str] | None = None,
                prepend_bos: bool = True) -> PromptSet:
        """Prompt pairs from a Hugging Face `datasets` dataset (a `Dataset`, or a name or local path
        for `datasets.load_dataset`, with `split`). `columns` maps our field names to the dataset's
        (e.g. {"clean": "prompt"}). Needs the optional `datasets` package."""
        try:
            import datasets
        except ImportError:
            raise InputError("reading a Hugging Face dataset needs the `datasets` package (pip install datasets); "
                             "or export the rows to JSONL, CSV or Parquet and read that file") from None
        if isinstance(dataset, str):
            name = dataset
            try:
                dataset = datasets.load_dataset(dataset, split=split)
            except Exception as e:  # noqa: BLE001 - the hub, a missing split or files: say what failed
                raise InputError(f"could not load the dataset {name!r} (split {split!r}): {type(e).__name__}: {e}") from None
        elif split is not None:
            dataset = dataset[split]
        if isinstance(dataset, datasets.DatasetDict):
            raise InputError(f"the dataset has splits {list(dataset)}: give split=")
        rename = {v: k for k, v in (columns or {}).items()}
        records = ({rename.get(k, k): v for k, v in row.items()} for row in dataset)
        name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "the dataset"
        return cls.from_records(records, model, prepend_bos=prepend_bos, source=name)


def read_records(path: Path) -> list[dict]:
    """The rows of a JSONL, CSV or Parquet file as dicts (ids in CSV parsed from space-separated ints)."""
    fmt = path.suffix.lower().lstrip(".")
    fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise InputError(f"{path.name}: unknown prompt file format {path.suffix!r}; allowed: .jsonl, .csv, .parquet")
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist")
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError("reading Parquet needs pyarrow (pip install pyarrow)") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - a corrupt or non-Parquet file
            raise InputError(f"{path.name} is not a readable Parquet file: {e}") from None
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        for i, row in enumerate(rows):
            if None in row:
                raise InputError(f"{path.name} row {i + 1} has more cells than the header has columns")
            for name in [*FIELDS.values()]:
                if _given(row.get(name)):
                    try:
                        row[name] = [int(x) for x in row[name].split()]
                    except ValueError:
                        raise InputError(f"{path.name} row {i + 1}: {name} must be token ids separated by spaces, "
                                         f"got {row[name]!r}") from None
                    if name in ("answer_id", "wrong_id") and len(row[name]) == 1:
                        row[name] = row[name][0]
        return rows
    records = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"{path.name} row {i + 1} is not valid JSON: {e.msg}") from None
    return records


def _given(value: object) -> bool:
    return value is not None and value != "" and value == value  # NaN from a table's empty cell


def _prompt(record: Mapping, name: str, model, prepend_bos: bool, where: str) -> list[int]:
    text, ids = record.get(name), record.get(FIELDS[name])
    if _given(ids):
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__") \
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            raise InputError(f"{where}: {FIELDS[name]} must be a list of token ids, got {ids!r}")
        ids = list(ids)
        if not ids or not all(0 <= x < model.cfg.vocab_size for x in ids):
            raise InputError(f"{where}: {FIELDS[name]} must be non-empty token ids in [0, {model.cfg.vocab_size})")
        return ids
    if not _given(text):
        raise InputError(f"{where} has no {name!r} field (or {FIELDS[name]!r}): each row needs the clean and corrupted "
                         "prompts, the answer and the wrong answer")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: {name} must be text that is not empty, got {text!r}")
    return model.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()


def _token(record: Mapping, name: str, model, where: str) -> int:
    text, token = record.get(name), record.get(FIELDS[name])
    if _given(token):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < model.cfg.vocab_size:
            raise InputError(f"{where}: {FIELDS[name]} must be one token id in [0, {model.cfg.vocab_size}), got {token!r}")
        return token
    if not _given(text):
        raise InputError(f"{where} has no {name!r} field (or {FIELDS[name]!r}): each row needs the clean and corrupted "
                         "prompts, the answer and the wrong answer")
    if not isinstance(text, str):
        raise InputError(f"{where}: {name} must be text, got {text!r}")
    try:
        return model.to_single_token(text)
    except InputError as e:
        raise InputError(f"{where}: {name} {text!r}: {e}; the metric reads one next token"
                         f"{leading_space_hint(model, text)}") from None


def leading_space_hint(model, text: str) -> str:
    """" Try ' Maryland' ..." when `text` lacks the leading space that would make it one token
    (GPT-2 words mid-sentence carry theirs), else ""."""
    if text.startswith(" ") or not text.strip():
        return ""
    try:
        model.to_single_token(" " + text)
    except InputError:
        return ""
    return f". With a leading space it is one token: try {' ' + text!r}"
