"""Prompt datasets (`workbench.methods.datasets`): every file format and a Hugging Face dataset give
the tokens of the same prompts given inline (checked against the tokenizer itself); bad files give
errors naming the row; prompts of different lengths are refused or padded, never cut; the
greater-than prompts and metric follow Hanna et al. 2023; the experiments take --prompts FILE."""

import csv
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from workbench.errors import InputError
from workbench.methods import LogitDiff, activation_patching
from workbench.methods.datasets import PromptSet
from workbench.methods.prompts import (
    GREATER_THAN_NOUNS,
    GREATER_THAN_YEARS,
    greater_than_prompts,
)
from workbench.models.tokenizer import EOT_ID

ROWS = [
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Mary gave a drink to",
     "answer": " Mary", "wrong": " John", "group": "store"},
    {"clean": "When Tom and Anna went to the park, Anna gave a ball to",
     "corrupted": "When Tom and Anna went to the park, Tom gave a ball to",
     "answer": " Tom", "wrong": " Anna", "group": "park"},
    {"clean": "When Lisa and Paul went to the store, Paul gave a book to",
     "corrupted": "When Lisa and Paul went to the store, Lisa gave a book to",
     "answer": " Lisa", "wrong": " Paul", "group": "store"},
]


def expected_ids(hf_tokenizer):
    """The ids straight from the reference tokenizer (transformers' GPT-2), BOS first."""
    enc = lambda text: [EOT_ID] + hf_tokenizer(text)["input_ids"]  # noqa: E731
    return ([enc(r["clean"]) for r in ROWS], [enc(r["corrupted"]) for r in ROWS],
            [hf_tokenizer(r["answer"])["input_ids"][0] for r in ROWS],
            [hf_tokenizer(r["wrong"])["input_ids"][0] for r in ROWS])


def write(path, rows):
    """`rows` as a JSONL, CSV or Parquet file (by suffix); ids in CSV as space-separated ints."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in rows:
                w.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()})
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_format_loads_the_tokens_of_the_same_prompts_inline(model, hf_tokenizer, tmp_path, suffix):
    clean, corrupted, answer, wrong = expected_ids(hf_tokenizer)
    inline = PromptSet.from_records(ROWS, model)
    from_file = PromptSet.read(write(tmp_path / f"prompts{suffix}", ROWS), model)
    for ps in (inline, from_file):
        assert ps.clean == clean and ps.corrupted == corrupted
        assert ps.answer == answer and ps.wrong == wrong
        assert ps.groups == ["store", "park", "store"]
    # ids instead of text: the same prompt set
    by_ids = [{"clean_ids": c, "corrupted_ids": k, "answer_id": a, "wrong_id": w}
              for c, k, a, w in zip(clean, corrupted, answer, wrong)]
    ps = PromptSet.read(write(tmp_path / f"ids{suffix}", by_ids), model)
    assert (ps.clean, ps.corrupted, ps.answer, ps.wrong) == (clean, corrupted, answer, wrong)


def test_hugging_face_dataset(model, hf_tokenizer, monkeypatch):
    import datasets  # optional for users (the "hf" extra), in the dev extras

    clean, corrupted, answer, wrong = expected_ids(hf_tokenizer)
    renamed = [{"prompt": r["clean"], "corrupted": r["corrupted"], "answer": r["answer"], "wrong": r["wrong"]}
               for r in ROWS]
    ps = PromptSet.from_hf(datasets.Dataset.from_list(renamed), model, columns={"clean": "prompt"})
    assert (ps.clean, ps.corrupted, ps.answer, ps.wrong) == (clean, corrupted, answer, wrong)
    with pytest.raises(InputError, match="split"):
        PromptSet.from_hf(datasets.DatasetDict({"train": datasets.Dataset.from_list(renamed)}), model)
    # without the package: a clear error, not an ImportError
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(InputError, match=r"needs the `datasets` package \(pip install datasets\)"):
        PromptSet.from_hf("some/dataset", model)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_bad_files_name_the_row(model, tmp_path, suffix):
    missing = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "wrong"}]
    with pytest.raises(InputError, match=r"row 2 has no 'wrong' field"):
        PromptSet.read(write(tmp_path / f"missing{suffix}", missing), model)
    multi = [dict(ROWS[0]), dict(ROWS[1]), {**ROWS[2], "answer": " Lisa Marie"}]
    with pytest.raises(InputError, match=r"row 3: answer ' Lisa Marie'.*2 tokens"):
        PromptSet.read(write(tmp_path / f"multi{suffix}", multi), model)
    longer = [dict(ROWS[0]), {**ROWS[1], "clean": ROWS[1]["clean"] + " the", "corrupted": ROWS[1]["corrupted"] + " the"}]
    ps = PromptSet.read(write(tmp_path / f"lengths{suffix}", longer), model)
    n1, n2 = (len(model.to_tokens(r["clean"])[0]) for r in longer)
    with pytest.raises(InputError, match=rf"lengths\S* row 2 is {n2} tokens but .* row 1 is {n1}"):
        ps.batch()
    pair = [dict(ROWS[0]), {**ROWS[1], "corrupted": ROWS[1]["corrupted"] + " the"}]
    with pytest.raises(InputError, match=rf"row 2: the clean prompt is {n2 - 1} tokens and the corrupted one {n2}"):
        PromptSet.read(write(tmp_path / f"pair{suffix}", pair), model)


def test_bad_file_formats(model, tmp_path):
    with pytest.raises(InputError, match="unknown prompt file format"):
        PromptSet.read(tmp_path / "prompts.txt", model)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(InputError, match="row 2 is not valid JSON"):
        PromptSet.read(bad, model)
    with pytest.raises(InputError, match="row 2 has no group label"):
        PromptSet.from_records([ROWS[0], {k: v for k, v in ROWS[1].items() if k != "group"}], model)


def test_padded_prompts_read_each_at_its_own_last_token(model):
    """length_rule="pad": right-padded, never cut; the metric of the padded batch equals each
    prompt's metric run alone at its own length (the padding after the read position is never read)."""
    rows = [dict(ROWS[0]), {**ROWS[1], "clean": "Then, Anna and Tom had fun. Anna gave a ball to",
                            "corrupted": "Then, Anna and Tom had fun. Tom gave a ball to"}]
    ps = PromptSet.from_records(rows, model)
    batch = ps.batch(length_rule="pad")
    lengths = ps.lengths()
    assert lengths[0] != lengths[1] and batch.clean.shape == (2, max(lengths))
    assert batch.read_pos.tolist() == [n - 1 for n in lengths]
    for i in range(2):
        assert batch.clean[i, :lengths[i]].tolist() == ps.clean[i]  # nothing cut
    with torch.no_grad():
        per_prompt = batch.metric.per_prompt(batch.metric.select(model(batch.clean)))
        alone = [float(LogitDiff(ps.answer[i], ps.wrong[i])(model(torch.tensor([ps.clean[i]])))) for i in range(2)]
    torch.testing.assert_close(per_prompt, torch.tensor(alone), atol=1e-4, rtol=1e-4)
    split = ps.by_length()
    assert sorted(split) == sorted(lengths) and [len(s) for s in split.values()] == [1, 1]


def test_shards_cover_the_rows_once(model):
    ps = PromptSet.from_records(ROWS * 3, model)
    shards = [ps.shard(r, 4) for r in range(4)]
    assert sum(len(s) for s in shards) == len(ps)
    assert [row for s in shards for row in s.clean] == ps.clean
    assert [n for s in shards for n in s.row_numbers] == list(range(1, 10))


# ---------------------------------------------------------------------- greater-than (Hanna et al. 2023)


def test_greater_than_prompts_follow_the_paper(hf_tokenizer):
    """Years YY are drawn from 02..98 (the paper's valid years of a century: " 17YY" tokenized as
    " 17" + "YY", its first (01) and last (99) left out); the corrupted prompt has YY = 01; nouns
    are single tokens."""
    assert GREATER_THAN_YEARS == tuple(range(2, 99))
    p = greater_than_prompts(n=64, seed=3)
    assert all(2 <= y <= 98 for y in p.years) and len(set(p.years)) > 20
    for noun, yy, clean, corrupted, ids in zip(p.nouns, p.years, p.clean_text, p.corrupted_text, p.clean_tokens):
        assert clean == f"The {noun} lasted from the year 17{yy:02d} to the year 17"
        assert corrupted == f"The {noun} lasted from the year 1701 to the year 17"
        assert ids.tolist() == [EOT_ID] + hf_tokenizer(clean)["input_ids"]
        # the start year is " 17" + "YY", two tokens
        assert hf_tokenizer.convert_ids_to_tokens(ids[-6:-4].tolist()) == ["Ġ17", f"{yy:02d}"]
    assert all(len(hf_tokenizer(" " + n)["input_ids"]) == 1 for n in GREATER_THAN_NOUNS)
    assert p.clean_tokens.shape == p.corrupted_tokens.shape
    assert greater_than_prompts(n=64, seed=3).clean_text == p.clean_text


def test_greater_than_metric_on_hand_made_logits(hf_tokenizer):
    """PD = sum_{y > YY} p(y) - sum_{y <= YY} p(y), p the softmax over the whole vocabulary, y the
    two-digit year tokens "00".."99"; computed here by hand from the tokenizer's ids."""
    p = greater_than_prompts(n=3, seed=0)
    p.years = [2, 50, 98]
    d_vocab = 50257
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, d_vocab, generator=g)
    year = {k: hf_tokenizer(f"{k:02d}")["input_ids"] for k in range(100)}
    assert all(len(v) == 1 for v in year.values())
    # put most of the mass on a few years so the numbers are far from 0
    logits[0, -1, year[1][0]] += 16   # <= 02: PD near -1
    logits[1, -1, year[70][0]] += 16  # > 50: PD near +1
    logits[2, -1, year[99][0]] += 10  # > 98 (99 only)
    logits[2, -1, year[10][0]] += 10  # <= 98
    probs = logits[:, -1].softmax(-1)
    by_hand = torch.tensor([sum(float(probs[b, year[k][0]]) * (1 if k > yy else -1) for k in range(100))
                            for b, yy in enumerate(p.years)])
    metric = p.metric()
    torch.testing.assert_close(metric.per_prompt(metric.select(logits)), by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metric(logits), by_hand.mean(), atol=1e-5, rtol=1e-5)
    assert by_hand[0] < -0.9 and by_hand[1] > 0.9
    # the PromptSet of the same prompts gives the same metric
    ps = PromptSet.from_greater_than(p)
    torch.testing.assert_close(ps.batch().metric(logits), by_hand.mean(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- experiments take --prompts FILE


def test_experiment_takes_a_prompt_file(model, tmp_path):
    """activation_patching with --prompts: the ids are the file's, group labels are recorded, the
    table has intervals per group, and per-prompt values equal each prompt run alone."""
    from workbench.experiments import run_experiment
    from workbench.experiments.activation_patching import ActivationPatchingConfig

    path = write(tmp_path / "prompts.jsonl", ROWS)
    config = ActivationPatchingConfig(prompts=str(path), target="head_out", n_resamples=200)
    run = run_experiment("activation_patching", config, model=model, root=tmp_path / "runs")
    ps = PromptSet.read(path, model)
    assert run.config.prompt_set == "file" and run.config.token_ids["clean"] == ps.clean
    assert run.config.prompt_groups == ["store", "park", "store"]
    table = run.results.tables["patching"]
    assert {"ci_low", "ci_high", "effect_ci_low", "effect_ci_high", "n"} <= set(table.columns)
    assert (table["n"] == 3).all()
    by_group = run.results.tables["patching_by_group"]
    assert sorted(by_group["group"].unique()) == ["park", "store"]
    assert (by_group.loc[by_group["group"] == "park", "n"] == 1).all()
    per_prompt = run.results.tensors["per_prompt"]
    for i in range(3):
        alone = activation_patching(model, torch.tensor([ps.clean[i]]), torch.tensor([ps.corrupted[i]]),
                                    LogitDiff(ps.answer[i], ps.wrong[i]), target="head_out", progress=False)
        torch.testing.assert_close(per_prompt[..., i], alone.values, atol=1e-4, rtol=1e-4)
    # the record replays after the file is gone: the recorded ids are the prompts
    from workbench.experiments import replay

    path.unlink()
    assert replay(run.path, model=model).ok


def test_prompt_file_errors_in_the_experiment(model, tmp_path):
    from workbench.experiments import run_experiment
    from workbench.experiments.activation_patching import ActivationPatchingConfig

    longer = [dict(ROWS[0]), {**ROWS[1], "clean": ROWS[1]["clean"] + " the", "corrupted": ROWS[1]["corrupted"] + " the"}]
    path = write(tmp_path / "mixed.csv", longer)
    n1, n2 = (len(model.to_tokens(r["clean"])[0]) for r in longer)
    with pytest.raises(InputError, match=f"mixed.csv row 2 is {n2} tokens but mixed.csv row 1 is {n1}"):
        run_experiment("activation_patching", ActivationPatchingConfig(prompts=str(path)), model=model, root=None)
    run = run_experiment("activation_patching", ActivationPatchingConfig(prompts=str(path), length_rule="pad",
                                                                         target="head_out"), model=model, root=None)
    assert [r[0] for r in run.config.token_ids["read_pos"]] == [n1 - 1, n2 - 1]
    with pytest.raises(InputError, match="goes with prompt_set 'file'"):
        ActivationPatchingConfig(prompts=str(path), prompt_set="ioi").validate()


def test_greater_than_preset_and_ablation_with_a_prompt_file(model, tmp_path):
    """The greater_than preset records the YY tokens its metric reads (the generator's years); the
    ablation experiment takes --prompts too and records intervals per head and per group."""
    from workbench.experiments import run_experiment
    from workbench.experiments.ablate_heads import AblateHeadsConfig
    from workbench.experiments.activation_patching import ActivationPatchingConfig
    from workbench.experiments.prompt_sets import prompt_set_metric

    run = run_experiment("activation_patching", ActivationPatchingConfig(prompt_set="greater_than", n_prompts=4,
                                                                         target="head_out", seed=5),
                         model=model, root=None)
    p = greater_than_prompts(n=4, seed=5)
    assert run.config.token_ids["clean"] == p.clean_tokens.tolist()
    assert [model.to_string(t) for t in run.config.token_ids["year_tokens"]] == [f"{y:02d}" for y in p.years]
    ids = {k: torch.tensor(v) for k, v in run.config.token_ids.items()}
    logits = torch.randn(4, p.clean_tokens.shape[1], 50257, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prompt_set_metric(run.config, ids, d_vocab=50257)(logits), p.metric()(logits))
    assert run.config.metric == "prob_diff"

    path = write(tmp_path / "prompts.parquet", ROWS)
    run = run_experiment("ablate_heads", AblateHeadsConfig(prompts=str(path), method="zero", n_resamples=100),
                         model=model, root=None)
    heads = run.results.tables["heads"]
    assert {"n", "ci_low", "ci_high", "effect_ci_low", "effect_ci_high"} <= set(heads.columns)
    assert set(run.results.tables["heads_by_group"]["group"]) == {"store", "park"}
    assert "95% intervals: percentile bootstrap of the mean over n = 3 prompts, 100 resamples" in run.results.summary
