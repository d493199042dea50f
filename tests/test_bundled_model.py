"""The shipped model loads by name with no network and meets the quality bars of its model card."""

import json
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench.methods.head_detectors import induction_scores
from workbench.methods.prompts import repeated_tokens
from workbench.models.bundled import BUNDLED_DIR, sha256_file
from workbench.models.tokenizer import gpt2_tokenizer
from workbench.training import baselines, in_context_losses

REPO = Path(__file__).resolve().parents[1]
NAME = "shakespeare-2l"


@pytest.fixture(scope="module")
def offline_model():
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        model = workbench.load_model(NAME, device="cpu")
    return model


@pytest.fixture(scope="module")
def corpus_split():
    text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    ids = torch.tensor(gpt2_tokenizer().encode_ordinary(text))
    n_val = int(len(ids) * 0.1)  # the split train_tiny.py uses
    return ids[:-n_val], ids[-n_val:]


def test_model_card_matches_the_weights_file():
    folder = BUNDLED_DIR / NAME
    card = json.loads((folder / "model_card.json").read_text())
    assert card["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size <= 16 * 2**20
    assert card["command"].startswith("python experiments/train_tiny.py")


def test_loads_offline_as_float32(offline_model):
    assert offline_model.dtype == torch.float32 and offline_model.cfg.n_layer == 2
    assert offline_model.name == NAME


def test_held_out_loss_beats_unigram_and_bigram(offline_model, corpus_split):
    train, val = corpus_split
    block = offline_model.cfg.block_size
    passage = val[: 8 * block + 1]  # a held-out passage the model never trained on
    windows = torch.stack([passage[i : i + block + 1] for i in range(0, 8 * block, block)])
    with torch.no_grad():
        logits = offline_model(windows[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    base = baselines(train, passage, vocab_size=offline_model.cfg.vocab_size)
    assert loss < base["bigram_val_loss"] - 0.1, (loss, base)
    assert loss < base["unigram_val_loss"] - 1.0, (loss, base)


def test_model_card_reports_what_the_weights_measure(offline_model):
    # The card's induction score and in-context losses are recomputed from the shipped (fp16) weights
    # with the same probe the training script used (16 repeated random sequences of 50, seed 0).
    card = json.loads((BUNDLED_DIR / NAME / "model_card.json").read_text())
    seed = card["train_config"]["seed"]
    tokens = repeated_tokens(n_seqs=16, seq_len=50, seed=seed)
    scores = induction_scores(offline_model, tokens)
    assert abs(scores.values.max().item() - card["induction_score"]) < 0.01
    first, second = in_context_losses(offline_model, tokens)
    assert abs(first - card["repeated_random_loss_first_copy"]) < 0.05
    assert abs(second - card["repeated_random_loss_second_copy"]) < 0.05


def induction_stripe_and_losses(model, tokens: torch.Tensor) -> tuple[dict, float, float]:
    """On [BOS] + r + r ([batch 2n+1]): every head's induction score by hand (from each token of the
    second copy, the attention to the token just after its first occurrence, n - 1 positions back,
    averaged over positions and prompts), and the mean loss on the first and on the second copy."""
    n = (tokens.shape[1] - 1) // 2
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    query = torch.arange(n + 1, 2 * n + 1)
    scores = {
        (layer, head): cache[f"blocks.{layer}.attn.hook_pattern"][:, head, query, query - n + 1].mean().item()
        for layer in range(model.cfg.n_layer) for head in range(model.cfg.n_head)
    }
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    losses = losses.view(tokens.shape[0], -1)  # predicting tokens 2..n (first copy) and n+2..2n (second)
    return scores, losses[:, 1:n].mean().item(), losses[:, n + 1 :].mean().item()


def test_has_an_induction_head(offline_model, corpus_split):
    # Fresh repeated random sequences (not the card's seed) of 50 tokens from the whole vocabulary ...
    scores, first, second = induction_stripe_and_losses(offline_model, repeated_tokens(n_seqs=16, seq_len=50, seed=12345))
    assert max(scores.values()) >= 0.4, scores
    # ... and the head does its job: the second copy is predicted better than the first (at least 10x
    # likelier per token; the corpus never shows most of these ids, so their copies stay weak) ...
    assert second < first - math.log(10), (first, second)
    # ... and, on ids of the training split, over 6 nats better (400x; the first copy is near chance).
    train, _ = corpus_split
    scores, first, second = induction_stripe_and_losses(
        offline_model, repeated_tokens(n_seqs=16, seq_len=50, seed=12345, vocab=torch.unique(train)))
    assert max(scores.values()) >= 0.4, scores
    assert second < first - 6, (first, second)


def test_samples_look_like_the_corpus(offline_model):
    prompt = offline_model.to_tokens("ROMEO:\n")
    out = offline_model.generate(prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=0)
    text = offline_model.to_string(out[0, prompt.shape[1]:])
    # the play format: speaker names in capitals followed by a colon, lines of verse
    assert "\n" in text
    words = [w.strip(".,;:!?'") for w in text.split()]
    english = {"the", "and", "to", "of", "I", "my", "you", "a", "that", "in", "me", "is", "not", "with", "your"}
    assert sum(w in english for w in words) >= 5, text
    assert offline_model.generate(prompt, max_new_tokens=20, seed=0).tolist() == offline_model.generate(
        prompt, max_new_tokens=20, seed=0).tolist()
