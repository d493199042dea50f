"""experiments/train_tiny.py works end to end (a few steps) and documents itself."""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import workbench
from workbench.models.bundled import BUNDLED_DIR, MODEL_FILES, sha256_file

REPO = Path(__file__).resolve().parents[1]


def test_help():
    out = subprocess.run([sys.executable, "experiments/train_tiny.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for option in ("--steps", "--n-layer", "--repeat-fraction", "--seed", "--out"):
        assert option in out


def test_tiny_training_run_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    args = ["--steps", "4", "--copy-steps", "3", "--copy-frequent-steps", "2", "--copy-pool", "50",
            "--batch-size", "2", "--block-size", "32", "--n-embd", "32", "--n-head", "2",
            "--eval-batches", "1", "--warmup-steps", "2", "--eval-every", "2", "--out", str(out)]
    # one thread: bit-identical reruns (a multi-threaded reduction can split differently under load)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "experiments/train_tiny.py", *args], cwd=REPO, check=True,
                   capture_output=True, text=True, env=env)
    card = json.loads((out / "model_card.json").read_text())
    assert card["steps"] == 4 and card["curriculum_steps"] == 3 and card["tokens_seen"] == (3 + 4) * 2 * 32
    assert [(h["phase"], h["step"]) for h in card["history"]] == [
        ("curriculum", 2), ("curriculum", 3), ("corpus", 2), ("corpus", 4)]
    assert card["command"].endswith(" ".join(args))
    assert card["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert card["data"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    for key in ("train_loss", "val_loss", "baselines", "induction_score", "wall_time_s", "train_config"):
        assert key in card
    model = workbench.load_model(out, device="cpu")
    assert model.cfg.n_embd == 32 and model.dtype == torch.float32
    # the same seed gives the same weights
    subprocess.run([sys.executable, "experiments/train_tiny.py", *args[:-1], str(tmp_path / "again")], cwd=REPO,
                   check=True, capture_output=True, env=env)
    assert sha256_file(tmp_path / "again" / "model.safetensors") == card["weights_sha256"]


def _train_tiny_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "experiments" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_tiny"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_batches_mix_corpus_windows_and_repeated_random_spans():
    tt = _train_tiny_module()
    cfg = tt.TrainConfig(batch_size=8, block_size=64, repeat_fraction=0.0, random_repeat_fraction=0.5,
                         min_span=4, max_span=20)
    data = torch.arange(1000, 3000)  # a "corpus" whose windows are easy to recognise
    pool = torch.arange(40000, 40100)
    inputs, targets = tt.get_batch(data, pool, cfg, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (8, 64)
    for row_in, row_tgt in zip(inputs[:4], targets[:4]):  # random-span rows come first
        seq = torch.cat([row_in, row_tgt[-1:]])  # the span r repeated
        assert set(seq.tolist()) <= set(pool.tolist())
        span = next(p for p in range(4, 21) if torch.equal(seq[p:], seq[:-p]))
        masked = (row_tgt == -100).nonzero().flatten().tolist()
        assert masked == list(range(span - 1))  # exactly the first copy is left out of the loss
        assert torch.equal(row_tgt[span - 1 :], seq[span:])
    for row_in, row_tgt in zip(inputs[4:], targets[4:]):  # corpus windows, every target in the loss
        assert torch.equal(row_in, torch.arange(row_in[0], row_in[0] + 64))
        assert torch.equal(row_tgt, row_in + 1)


def test_lm_loss_is_cross_entropy_over_the_kept_targets():
    tt = _train_tiny_module()
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16))
    inputs = torch.randint(0, 50257, (3, 16))
    targets = torch.randint(0, 50257, (3, 16))
    targets[0, :5] = -100
    targets[2, 3:9] = -100
    expected = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.allclose(tt.lm_loss(model, inputs, targets), expected, atol=1e-5)


def test_copy_loss_is_cross_entropy_over_the_candidates_only():
    tt = _train_tiny_module()
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=24))
    cfg = tt.TrainConfig(batch_size=3, block_size=24, min_span=3, max_span=10)
    candidates = torch.randperm(50257)[:40]
    loss = tt.copy_loss(model, candidates, cfg, torch.Generator().manual_seed(5))
    # the same rows, scored by hand: full-vocabulary logits, candidate columns, first copies left out
    index, targets = tt.random_span_rows(3, 40, cfg, torch.Generator().manual_seed(5))
    logits = model(candidates[index[:, :-1]])[..., candidates]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert (targets == -100).any() and (targets != -100).any()


def test_copy_candidates_are_frequent_ids_then_fresh_ids_of_the_whole_vocabulary():
    tt = _train_tiny_module()
    cfg = tt.TrainConfig(copy_frequent_steps=2, copy_pool=100)
    frequent = torch.arange(50256, -1, -1)  # "most frequent first"
    g = torch.Generator().manual_seed(0)
    assert torch.equal(tt.copy_candidates(1, frequent, 50257, cfg, g), frequent[:100])
    later = [tt.copy_candidates(step, frequent, 50257, cfg, g) for step in (2, 3)]
    for ids in later:
        assert len(ids) == len(set(ids.tolist())) == 100 and ids.min() >= 0 and ids.max() < 50257
    assert not torch.equal(later[0], later[1])  # drawn afresh each step
    assert min(ids.min() for ids in later) < 50257 - 1000  # not from the frequent head


def test_options_that_cannot_train_are_refused_with_what_is_allowed():
    tt = _train_tiny_module()
    for options, message in [
        ({"random_repeat_fraction": 1.5}, r"--random-repeat-fraction must be in \[0, 1\], got 1.5"),
        ({"repeat_fraction": 0.5, "random_repeat_fraction": 0.75}, "must be at most 1, got 0.5 \\+ 0.75"),
        ({"min_span": 0}, "need 1 <= --min-span <= --max-span, got 0 and 64"),
        ({"min_span": 30, "max_span": 20}, "got 30 and 20"),
        ({"random_repeat_fraction": 0.5, "block_size": 32, "min_span": 20}, "at most 16"),
        ({"copy_pool": 1}, r"--copy-pool must be in \[2, 50257\], got 1"),
        ({"span_ids": "words"}, "--span-ids must be 'vocab' or 'train', got 'words'"),
        ({"copy_steps": -1}, "--copy-steps must be >= 0, got -1"),
        ({"steps": 0, "copy_frequent_steps": -2}, "--steps must be >= 1, got 0; --copy-frequent-steps must be >= 0"),
    ]:
        with pytest.raises(SystemExit, match=message):
            tt.check_config(tt.TrainConfig(**options))
    tt.check_config(tt.TrainConfig(random_repeat_fraction=0.5, block_size=32, min_span=16))  # the limit itself
    out = subprocess.run([sys.executable, "experiments/train_tiny.py", "--min-span", "0", "--steps", "1"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "need 1 <= --min-span" in out.stderr and "Traceback" not in out.stderr


def test_init_weights_is_gpt2_initialisation_at_the_given_std():
    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=64))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)  # as after training
    model.init_weights(std=0.05)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - 0.05 / (2 * 4) ** 0.5) < 0.002, name  # 1/sqrt(2 n_layer), GPT-2
        elif "ln" in name:
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert abs(p.std().item() - 0.05) < 0.002 and abs(p.mean().item()) < 0.002, name


TINY = ["--batch-size", "2", "--block-size", "32", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
        "--copy-pool", "50", "--eval-batches", "1", "--warmup-steps", "2", "--eval-every", "0"]


def test_default_out_is_a_new_folder_under_the_current_directory_not_the_package(tmp_path, monkeypatch):
    tt = _train_tiny_module()
    shipped = {f: sha256_file(BUNDLED_DIR / "shakespeare-2l" / f) for f in MODEL_FILES}
    monkeypatch.chdir(tmp_path)
    card = tt.main(["--steps", "2", *TINY])
    (out,) = (tmp_path / "models").iterdir()
    assert re.fullmatch(r"shakespeare-1l-\d{8}T\d{6}Z", out.name) and card["name"] == out.name
    assert card["train_config"]["out"] == f"models/{out.name}"
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)
    assert {f: sha256_file(BUNDLED_DIR / "shakespeare-2l" / f) for f in MODEL_FILES} == shipped
    assert workbench.load_model(out, device="cpu").cfg.n_layer == 1


def test_a_short_run_is_short_the_curriculum_scales_with_steps(tmp_path):
    tt = _train_tiny_module()
    card = tt.main(["--steps", "3", *TINY, "--out", str(tmp_path / "m")])
    assert card["steps"] == 3 and card["curriculum_steps"] == 10  # round(3.2 * 3)
    assert card["train_config"]["copy_frequent_steps"] == 6  # round(0.625 * 10)
    assert card["tokens_seen"] == (10 + 3) * 2 * 32
    explicit = tt.with_defaults(tt.parse_args(["--steps", "3", "--copy-steps", "0"])[0])
    assert (explicit.copy_steps, explicit.copy_frequent_steps) == (0, 0)
    out = subprocess.run([sys.executable, "experiments/train_tiny.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "the curriculum scales with it unless --copy-steps is given" in " ".join(out.split())


def test_an_existing_model_is_not_replaced_without_force(tmp_path):
    tt = _train_tiny_module()
    out = tmp_path / "m"
    tt.main(["--steps", "1", *TINY, "--out", str(out)])
    first = sha256_file(out / "model.safetensors")
    before = {f: (out / f).read_bytes() for f in MODEL_FILES}
    t = time.perf_counter()
    with pytest.raises(SystemExit, match=rf"train_tiny.py: --out {re.escape(str(out))} already holds a model "
                                         r"\(model.safetensors, config.json, model_card.json\); pass --force"):
        tt.main(["--steps", "1", *TINY, "--seed", "1", "--out", str(out)])
    assert time.perf_counter() - t < 2  # refused before loading data or training
    assert {f: (out / f).read_bytes() for f in MODEL_FILES} == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        tt.main(["--steps", "1", *TINY, "--out", str(tmp_path / "file")])
    tt.main(["--steps", "1", *TINY, "--seed", "1", "--out", str(out), "--force"])
    card = json.loads((out / "model_card.json").read_text())
    assert card["weights_sha256"] == sha256_file(out / "model.safetensors") != first
    assert card["train_config"]["seed"] == 1
    cli = subprocess.run([sys.executable, "experiments/train_tiny.py", "--steps", "1", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True)
    assert cli.returncode != 0 and "already holds a model" in cli.stderr and "Traceback" not in cli.stderr


def readme_commands() -> list[list[str]]:
    """The train_tiny.py commands in the README's "The bundled model" section, as argument lists."""
    section = (REPO / "README.md").read_text().split("## The bundled model")[1].split("\n## ")[0]
    block = section.split("```bash\n")[1].split("```")[0]
    return [shlex.split(line.split("#")[0])[2:] for line in block.splitlines() if "train_tiny.py" in line]


def test_readme_commands_are_what_made_the_shipped_weights():
    """The README's two commands, parsed by today's script, give the configs the model card recorded for
    the two runs that made the shipped weights (the card kept the absolute --out each run wrote to)."""
    tt = _train_tiny_module()
    card = json.loads((BUNDLED_DIR / "shakespeare-2l" / "model_card.json").read_text())
    stage1, stage2 = readme_commands()
    for argv, recorded in ((stage1, card["parent"]["train_config"]), (stage2, card["train_config"])):
        cfg, force = tt.parse_args(argv)
        cfg = dataclasses.asdict(tt.with_defaults(cfg))
        assert force and cfg.pop("out") == "workbench/data/models/shakespeare-2l"
        assert recorded.pop("out").endswith("workbench/data/models/shakespeare-2l")
        if cfg["copy_steps"] == recorded["copy_steps"] == 0:  # no curriculum: its share on frequent ids is moot
            assert (cfg.pop("copy_frequent_steps"), recorded.pop("copy_frequent_steps")) == (0, 1000)
        assert cfg == recorded
    assert tt.with_defaults(tt.TrainConfig()).copy_steps == card["parent"]["curriculum_steps"] == 1600
