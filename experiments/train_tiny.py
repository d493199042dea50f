"""Train the bundled default model from scratch: a 2-layer GPT-2-architecture model on Tiny Shakespeare,
after an induction curriculum (repeated random token spans) that gives it induction heads.

    python experiments/train_tiny.py                       # 1,600 curriculum + 500 corpus steps (38 min, 2-core CPU)
    python experiments/train_tiny.py --steps 5             # a smoke run: 16 curriculum + 5 corpus steps
    python experiments/train_tiny.py --init-from models/shakespeare-2l-<time> --copy-steps 0 --steps 250 \\
        --lr 2e-3 --min-lr 2e-4 --warmup-steps 20          # train further, corpus only

Run length: --steps corpus steps, after --copy-steps curriculum steps, which default to 3.2 x --steps
(1,600 at the default 500; the first 5/8 of them, --copy-frequent-steps, on frequent ids). So --steps N
runs about 4.2 N steps in all; pass --copy-steps explicitly (0 = none) to set the curriculum on its own.

Writes `model.safetensors` (fp16), `config.json` and `model_card.json` to --out, by default a new folder
models/shakespeare-<n_layer>l-<UTC time> under the current directory. An --out that already holds a
model is refused unless --force is given. The shipped model's exact commands are in the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench.models import GPT, GPTConfig, gpt2_tokenizer, load_model  # noqa: E402
from workbench.errors import InputError, WorkbenchError  # noqa: E402
from workbench.models.bundled import BUNDLED_DIR, MODEL_FILES, save_bundled  # noqa: E402
from workbench.methods.head_detectors import induction_scores  # noqa: E402
from workbench.training import baselines, evaluate_quality, induction_probe  # noqa: E402


@dataclass
class TrainConfig:
    data: str = "data/tinyshakespeare/input.txt"
    val_fraction: float = 0.1  # the last 10% of the tokens
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    batch_size: int = 16
    steps: int = 500
    lr: float = 2e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Weight init std; 0 = GPT-2's 0.02. (0.02 * sqrt(768 / n_embd), 0.049 here, scales it to the width.)
    init_std: float = 0.0
    # Rows of the form [a passage, the same passage] (copying of corpus text).
    repeat_fraction: float = 0.25
    # Rows [r, r, r, ...]: a span r of random token ids, of random length in [min_span, max_span],
    # repeated to fill the row. Only the repeats are predictable, so the first copy is left out of the
    # loss. They keep the induction heads of the curriculum below working while the model learns the
    # corpus. span_ids: draw r from the whole vocabulary ("vocab") or from the ids that occur in the
    # training split ("train"); with "train" the heads kept working on those ids only (score 0.72 vs
    # 0.34 on the whole vocabulary after 100 corpus steps), as the ids the corpus never shows drift.
    random_repeat_fraction: float = 0.25
    span_ids: str = "vocab"
    min_span: int = 8
    max_span: int = 64
    # Induction curriculum, run before the corpus: copy_steps steps whose rows are all repeated random
    # spans, with the softmax restricted to the copy_pool candidate ids the spans are drawn from (a
    # sampled softmax: cheap, and copying is all there is to learn). The first copy_frequent_steps draw
    # from the copy_pool most frequent training ids (induction heads form there in ~600 steps); the rest
    # draw copy_pool fresh ids from the whole vocabulary each step, so the heads work on any token.
    # Without it, 1,800 corpus steps with random-span rows did not form an induction head (README).
    # None: scale with --steps (CURRICULUM_PER_STEP and FREQUENT_FRACTION below), 1,600 and 1,000 at 500.
    copy_steps: int | None = None
    copy_frequent_steps: int | None = None
    copy_pool: int = 1000
    copy_lr: float = 1e-3
    # Start from these weights (a directory or bundled model name) instead of from scratch;
    # the model card then keeps the card of those weights under "parent".
    init_from: str = ""
    eval_every: int = 100  # log validation loss and induction score every this many steps (0 = never)
    eval_batches: int = 8
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    out: str = ""  # "": models/shakespeare-<n_layer>l-<UTC time> under the current directory


CURRICULUM_PER_STEP = 3.2  # default curriculum steps per corpus step: 1,600 for the default 500
FREQUENT_FRACTION = 0.625  # of the curriculum on the most frequent training ids: 1,000 of 1,600
HELP = {
    "steps": "corpus steps (default 500); the curriculum scales with it unless --copy-steps is given",
    "copy_steps": f"induction-curriculum steps before the corpus (default {CURRICULUM_PER_STEP} x --steps, "
                  "1,600 at the default 500; 0 = none)",
    "copy_frequent_steps": f"curriculum steps drawing from the most frequent training ids (default "
                           f"{FREQUENT_FRACTION} x --copy-steps, 1,000 of 1,600)",
    "init_from": "start from these weights (a model directory or bundled model name) instead of from scratch",
    "out": "folder to write the model to (default: a new models/shakespeare-<n_layer>l-<UTC time> under the "
           "current directory); one that already holds a model is refused unless --force",
}


def with_defaults(cfg: TrainConfig, *, n_layer: int | None = None, now: float | None = None) -> TrainConfig:
    """`cfg` with the options left to scale filled in: the curriculum from --steps, --out from the time."""
    copy_steps = round(CURRICULUM_PER_STEP * cfg.steps) if cfg.copy_steps is None else cfg.copy_steps
    frequent = round(FREQUENT_FRACTION * copy_steps) if cfg.copy_frequent_steps is None else cfg.copy_frequent_steps
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    out = cfg.out or f"models/shakespeare-{n_layer or cfg.n_layer}l-{stamp}"
    return dataclasses.replace(cfg, copy_steps=copy_steps, copy_frequent_steps=frequent, out=out)


def check_out(out: str, *, force: bool) -> None:
    """Refuse to write over a model (or into a file) unless `force`."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    existing = [f for f in MODEL_FILES if (path / f).exists()]
    if existing and not force:
        raise InputError(f"--out {out} already holds a model ({', '.join(existing)}); pass --force to replace it, "
                         "or choose another --out (the default is a new timestamped folder)")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def check_config(cfg: TrainConfig) -> None:
    """Refuse options that cannot train, saying what is allowed."""
    problems = []
    for name in ("repeat_fraction", "random_repeat_fraction"):
        if not 0 <= getattr(cfg, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.repeat_fraction + cfg.random_repeat_fraction > 1:
        problems.append(f"--repeat-fraction + --random-repeat-fraction must be at most 1, got "
                        f"{cfg.repeat_fraction} + {cfg.random_repeat_fraction}")
    if not 1 <= cfg.min_span <= cfg.max_span:
        problems.append(f"need 1 <= --min-span <= --max-span, got {cfg.min_span} and {cfg.max_span}")
    if cfg.steps < 1:  # the card's training loss is the corpus phase's
        problems.append(f"--steps must be >= 1, got {cfg.steps}")
    for name in ("copy_steps", "copy_frequent_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.span_ids not in ("vocab", "train"):
        problems.append(f"--span-ids must be 'vocab' or 'train', got {cfg.span_ids!r}")
    if not 2 <= cfg.copy_pool <= GPTConfig().vocab_size:
        problems.append(f"--copy-pool must be in [2, {GPTConfig().vocab_size}], got {cfg.copy_pool}")
    if (cfg.random_repeat_fraction or cfg.copy_steps != 0) and cfg.min_span > (cfg.block_size + 1) // 2:
        problems.append(f"--min-span {cfg.min_span} leaves no repeat in a row of {cfg.block_size + 1} tokens: "
                        f"at most {(cfg.block_size + 1) // 2}")
    if problems:
        raise SystemExit("train_tiny.py: " + "; ".join(problems))


def random_span_rows(
    n_rows: int, n_ids: int, cfg: TrainConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [r, r, r, ...] of block_size + 1 indices into `n_ids` ids, r a random span of length in
    [min_span, min(max_span, half a row)]; and their targets, [n_rows, block_size], -100 over the
    first copy of r (it cannot be predicted)."""
    max_span = min(cfg.max_span, (cfg.block_size + 1) // 2)  # at least two copies of r in a row
    rows = torch.empty(n_rows, cfg.block_size + 1, dtype=torch.long)
    targets = torch.empty(n_rows, cfg.block_size, dtype=torch.long)
    for i in range(n_rows):
        span = int(torch.randint(cfg.min_span, max_span + 1, (1,), generator=g))
        r = torch.randint(0, n_ids, (span,), generator=g)
        rows[i] = r.repeat(math.ceil((cfg.block_size + 1) / span))[: cfg.block_size + 1]
        targets[i] = rows[i, 1:]
        targets[i, : span - 1] = -100
    return rows, targets


def get_batch(
    data: torch.Tensor, pool: torch.Tensor, cfg: TrainConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets, [batch_size, block_size] each; target -100 = not in the loss.

    Rows are corpus windows; a fraction repeat their first half, a fraction are repeated random spans
    of ids from `pool`."""
    starts = torch.randint(0, len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=g)
    rows = torch.stack([data[s : s + cfg.block_size + 1] for s in starts.tolist()])
    targets = rows[:, 1:].clone()
    n_rep = int(round(cfg.repeat_fraction * cfg.batch_size))
    n_rand = min(cfg.batch_size - n_rep, int(round(cfg.random_repeat_fraction * cfg.batch_size)))
    half = (cfg.block_size + 1) // 2
    for i in range(n_rep):
        rows[i, half : 2 * half] = rows[i, :half]
        targets[i] = rows[i, 1:]
    if n_rand:
        index, target_index = random_span_rows(n_rand, len(pool), cfg, g)
        rows[n_rep : n_rep + n_rand] = pool[index]
        targets[n_rep : n_rep + n_rand] = torch.where(target_index == -100, -100, pool[target_index.clamp(min=0)])
    return rows[:, :-1], targets


def lm_loss(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the positions whose target is not -100; only those are unembedded."""
    resid = model.run_blocks(model.embed_input(inputs))
    keep = targets != -100
    logits = model.logits_from_resid(resid[keep][None])[0]
    return F.cross_entropy(logits, targets[keep])


def copy_candidates(
    step: int, frequent: torch.Tensor, vocab_size: int, cfg: TrainConfig, g: torch.Generator
) -> torch.Tensor:
    """The ids a curriculum step draws its spans from and scores against: the copy_pool most frequent
    training ids for the first copy_frequent_steps, then copy_pool random ids of the whole vocabulary."""
    if step < cfg.copy_frequent_steps:
        return frequent[: cfg.copy_pool]
    return torch.randperm(vocab_size, generator=g)[: cfg.copy_pool]


def copy_loss(model: GPT, candidates: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Next-token loss on a batch of repeated random spans of `candidates`, the softmax over `candidates`
    only (targets and logits both index into it)."""
    index, targets = random_span_rows(cfg.batch_size, len(candidates), cfg, g)
    resid = model.run_blocks(model.embed_input(candidates[index[:, :-1]]))
    keep = targets != -100
    logits = model.ln_final(resid[keep][None])[0] @ model.W_U[:, candidates]
    return F.cross_entropy(logits, targets[keep])


def optimizer_step(model: GPT, opt: torch.optim.Optimizer, loss: torch.Tensor, *, lr: float, cfg: TrainConfig) -> None:
    """One AdamW step on `loss` at learning rate `lr`, gradients clipped to cfg.grad_clip."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """(config, --force) from the command line; options left to scale stay None (`with_defaults`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int if f.default is None else type(f.default),
                            default=f.default, help=HELP.get(f.name))
    parser.add_argument("--force", action="store_true", help="replace the model already in --out")
    args = vars(parser.parse_args(argv))
    force = args.pop("force")
    return TrainConfig(**args), force


def main(argv: list[str] | None = None) -> dict:
    try:
        return train(argv)
    except WorkbenchError as e:
        raise SystemExit(f"train_tiny.py: {e}") from None


def train(argv: list[str] | None = None) -> dict:
    cfg, force = parse_args(argv)
    check_config(cfg)
    if cfg.out:
        check_out(cfg.out, force=force)  # before any training
    command = "python experiments/train_tiny.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)

    data_path = (REPO / cfg.data) if not Path(cfg.data).is_absolute() else Path(cfg.data)
    raw = data_path.read_bytes()
    ids = torch.tensor(gpt2_tokenizer().encode_ordinary(raw.decode("utf-8")), dtype=torch.long)
    n_val = int(len(ids) * cfg.val_fraction)
    train, val = ids[:-n_val], ids[-n_val:]
    pool = torch.unique(train)  # the token ids of the training split

    parent = None
    if cfg.init_from:
        model = load_model(cfg.init_from, device="cpu").train()
        model_cfg = model.cfg
        parent_card = (Path(cfg.init_from) if Path(cfg.init_from).exists() else BUNDLED_DIR / cfg.init_from) / "model_card.json"
        if parent_card.is_file():
            try:
                parent = json.loads(parent_card.read_text())
            except ValueError as e:
                raise InputError(f"{parent_card} (the model card of --init-from) is not valid JSON: {e}") from None
        if cfg.block_size > model_cfg.block_size:
            raise SystemExit(f"--block-size {cfg.block_size} exceeds the model's context {model_cfg.block_size}")
    else:
        model_cfg = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size)
        model = GPT(model_cfg)
        if cfg.init_std:
            model.init_weights(std=cfg.init_std)
    cfg = with_defaults(cfg, n_layer=model_cfg.n_layer)
    check_out(cfg.out, force=force)
    # Weight decay on matrices only; embeddings stay undecayed so that tokens the corpus never
    # shows keep distinct random embeddings (induction on random tokens needs to tell them apart).
    decayed = {n: p.ndim == 2 and not n.startswith(("embed.", "pos_embed.")) for n, p in model.named_parameters()}
    decay = [p for n, p in model.named_parameters() if decayed[n]]
    no_decay = [p for n, p in model.named_parameters() if not decayed[n]]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )

    t0 = time.time()
    losses: list[float] = []
    history: list[dict] = []
    frequent = torch.bincount(train, minlength=model_cfg.vocab_size).argsort(descending=True)
    span_pool = pool if cfg.span_ids == "train" else torch.arange(model_cfg.vocab_size)
    bar = tqdm(range(cfg.copy_steps), desc="induction curriculum", dynamic_ncols=True)
    for step in bar:
        loss = copy_loss(model, copy_candidates(step, frequent, model_cfg.vocab_size, cfg, g), cfg, g)
        optimizer_step(model, opt, loss, lr=cfg.copy_lr * min(1.0, (step + 1) / cfg.warmup_steps), cfg=cfg)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.copy_steps):
            history.append({"phase": "curriculum", "copy_loss": loss.item(),
                            **checkpoint_stats(model, val, pool, cfg, step + 1, [loss.item()])})
            bar.write(json.dumps(history[-1]))
    bar = tqdm(range(cfg.steps), desc="corpus", dynamic_ncols=True)
    for step in bar:
        loss = lm_loss(model, *get_batch(train, span_pool, cfg, g))
        optimizer_step(model, opt, loss, lr=lr_at(step, cfg), cfg=cfg)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(step, cfg):.1e}")
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            history.append({"phase": "corpus", **checkpoint_stats(model, val, pool, cfg, step + 1, losses)})
            bar.write(json.dumps(history[-1]))
    wall = time.time() - t0

    model.eval()
    val_loss = evaluate_loss(model, val, batch_size=cfg.batch_size, max_batches=cfg.eval_batches)
    train_loss = evaluate_loss(model, train[: len(val)], batch_size=cfg.batch_size, max_batches=cfg.eval_batches)
    quality = evaluate_quality(model, val_tokens=val, pool=pool, seed=cfg.seed)
    base = baselines(train, val, vocab_size=model_cfg.vocab_size)
    card = {
        "name": Path(cfg.out).name,
        "what": f"{model_cfg.n_layer}-layer GPT-2-architecture model (d_model {model_cfg.n_embd}, "
        f"{model_cfg.n_head} heads, context {model_cfg.block_size}, GPT-2 vocabulary) trained "
        + (f"further from {cfg.init_from!r} (see parent): " if cfg.init_from else "from scratch: ")
        + (f"{cfg.copy_steps} steps of an induction curriculum (repeated random token spans), then "
           if cfg.copy_steps else "")
        + f"{cfg.steps} steps on Tiny Shakespeare",
        "command": command,
        "train_config": dataclasses.asdict(cfg),
        "model_config": model_cfg.to_dict(),
        "data": {
            "path": cfg.data,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "tokens": len(ids),
            "train_tokens": len(train),
            "val_tokens": len(val),
            "split": f"first {1 - cfg.val_fraction:.0%} of the tokens train, last {cfg.val_fraction:.0%} validation",
            "source": "karpathy/char-rnn data/tinyshakespeare/input.txt (public domain text)",
        },
        "steps": cfg.steps,
        "curriculum_steps": cfg.copy_steps,
        "tokens_seen": (cfg.copy_steps + cfg.steps) * cfg.batch_size * cfg.block_size,
        "history": history,
        "final_train_loss_ema": trailing_mean(losses),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "baselines": base,
        **quality,
        "wall_time_s": round(wall, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype_stored": "float16 (loaded as float32)",
    }
    if parent is not None:
        card["parent"] = parent
        card["tokens_seen_total"] = card["tokens_seen"] + parent.get("tokens_seen_total", parent["tokens_seen"])
        card["wall_time_s_total"] = round(wall + parent.get("wall_time_s_total", parent["wall_time_s"]), 1)
    check_out(cfg.out, force=force)  # again: something may have been written there while this trained
    save_bundled(model, Path(cfg.out), card)
    print(json.dumps({k: card[k] for k in ("val_loss", "baselines", "induction_score", "wall_time_s")}, indent=1))
    print(f"saved to {cfg.out}")
    return card


def trailing_mean(losses: list[float], n: int = 20) -> float:
    """Mean of the last n training losses (the "train_loss_ema" of the log and the card)."""
    return sum(losses[-n:]) / len(losses[-n:])


@torch.no_grad()
def checkpoint_stats(model: GPT, val: torch.Tensor, pool: torch.Tensor, cfg: TrainConfig, step: int,
                     losses: list[float]) -> dict:
    """Validation loss and the best induction score so far (a few batches, for the training log)."""
    model.eval()
    stats = {"step": step, "train_loss_ema": trailing_mean(losses),
             "val_loss": evaluate_loss(model, val, batch_size=cfg.batch_size, max_batches=2),
             "induction_score": induction_scores(model, induction_probe(model, seed=cfg.seed)).values.max().item(),
             "induction_score_pool_tokens":
                 induction_scores(model, induction_probe(model, seed=cfg.seed, pool=pool)).values.max().item()}
    model.train()
    return stats


@torch.no_grad()
def evaluate_loss(model: GPT, data: torch.Tensor, *, batch_size: int, max_batches: int) -> float:
    """Mean next-token loss over consecutive full-context windows of `data` (at most max_batches batches)."""
    n = model.cfg.block_size
    windows = [data[i : i + n + 1] for i in range(0, len(data) - n - 1, n)]
    windows = windows[: max_batches * batch_size] or [data]
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.stack(windows[i : i + batch_size])
        logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    return total / count


if __name__ == "__main__":
    try:
        main()
    except WorkbenchError as e:  # bad input: one line, no traceback
        raise SystemExit(f"train_tiny.py: error: {e}") from None
