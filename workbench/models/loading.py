"""`load_model`: GPT-2 from the Hugging Face hub, a local HF directory, a nanoGPT checkpoint, or a
bundled model. Conversion is a key table plus HF's Conv1D transposes, with a shape check per copy."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from workbench.errors import CheckpointError, InputError, ModelNotFoundError
from workbench.models.bundled import BUNDLED_DIR, FORMAT, bundled_names
from workbench.models.config import PRESETS, GPTConfig
from workbench.models.gpt import GPT
from workbench.models.hub import download, repo_of

HUB_REPOS = {name: repo_of(name) for name in PRESETS}

# Source key (HF GPT2LMHeadModel and nanoGPT share names, after dropping "transformer.") -> ours.
KEY_TABLE = {
    r"wte\.weight": "embed.W_E",
    r"wpe\.weight": "pos_embed.W_pos",
    r"h\.(\d+)\.ln_1\.(weight|bias)": r"blocks.\1.ln1.\2",
    r"h\.(\d+)\.attn\.c_attn\.(weight|bias)": r"blocks.\1.attn.c_attn.\2",
    r"h\.(\d+)\.attn\.c_proj\.(weight|bias)": r"blocks.\1.attn.c_proj.\2",
    r"h\.(\d+)\.ln_2\.(weight|bias)": r"blocks.\1.ln2.\2",
    r"h\.(\d+)\.mlp\.c_fc\.(weight|bias)": r"blocks.\1.mlp.c_fc.\2",
    r"h\.(\d+)\.mlp\.c_proj\.(weight|bias)": r"blocks.\1.mlp.c_proj.\2",
    r"ln_f\.(weight|bias)": r"ln_final.\1",
}
# HF stores these as Conv1D ([in, out]); nn.Linear wants [out, in]. nanoGPT already uses nn.Linear.
CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
# Causal-mask buffers of old checkpoints, and the unembedding that GPT-2 ties to wte.
IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight")
# Workbench's own keys before embed and pos_embed took TransformerLens's component names: how
# workbench-format files written before then (the bundled model among them) are read.
RENAMED_KEYS = {"wte.weight": "embed.W_E", "wpe.weight": "pos_embed.W_pos"}

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise InputError(f"unsupported dtype {dtype!r}; allowed: float32, bfloat16, float16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load on (None: CUDA when available, else CPU). InputError for a device string
    torch does not know, or a GPU this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r} ({e}); e.g. cpu, cuda, cuda:1, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: CUDA is not available on this machine; use device 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available on this machine; use device 'cpu'")
    return dev


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> GPT:
    """Load a GPT by name or path, in eval mode.

    - "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl": the local Hugging Face cache (no network), else
      the hub if it answers within a few seconds (`workbench.models.hub`);
    - a bundled model name (`bundled_names()`, e.g. "shakespeare-2l"): from the package;
    - a directory in Hugging Face format (config.json + model.safetensors or pytorch_model.bin),
      or one written by workbench;
    - a nanoGPT checkpoint file (`ckpt.pt` with `model_args` and `model`), loaded with weights_only.

    `device=None` means CUDA when available; `dtype` is float32 (default), bfloat16 or float16.
    """
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    name = str(name_or_path)
    if name in bundled_names() and not Path(name).exists():
        source = BUNDLED_DIR / name
    elif name in HUB_REPOS and not Path(name).exists():
        source = download(name)
    elif Path(name).is_dir() or Path(name).is_file():
        source = Path(name)
    else:
        known = sorted([*HUB_REPOS, *bundled_names()])
        raise ModelNotFoundError(
            f"no model named {name!r}, and no file or directory at that path. Names: {', '.join(known)}; "
            "or pass a Hugging Face-format directory or a nanoGPT ckpt.pt"
        )
    cfg, state = load_directory(source) if source.is_dir() else load_nanogpt(source)
    model = build(cfg, state, dtype=torch_dtype, device=torch_device)
    model.name = name
    # The one file the weights were read from (runs record its sha256); None for sharded weights.
    weights = weights_path(source) if source.is_dir() else source
    model.weights_file = None if weights.name.endswith(".index.json") else weights.resolve()
    model.weights_file_mtime_ns = weights.stat().st_mtime_ns  # a file replaced after loading is not these weights
    return model


def build(cfg: GPTConfig, state: dict[str, torch.Tensor], *, dtype: torch.dtype, device: torch.device) -> GPT:
    """A GPT with exactly these weights (every key present, every shape checked)."""
    with torch.device("meta"):
        model = GPT(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit a {cfg.n_layer}-layer GPT: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise CheckpointError(f"{key}: checkpoint has shape {tuple(state[key].shape)}, the model needs {tuple(shape)}")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def convert_state_dict(source: dict[str, torch.Tensor], *, conv1d: bool) -> dict[str, torch.Tensor]:
    """Map HF / nanoGPT keys to ours; transpose HF's Conv1D weights (`conv1d=True`)."""
    out: dict[str, torch.Tensor] = {}
    lm_head = None
    for key, tensor in source.items():
        key = key.removeprefix("_orig_mod.").removeprefix("transformer.")
        if IGNORED.fullmatch(key):
            lm_head = tensor if key == "lm_head.weight" else lm_head
            continue
        for pattern, target in KEY_TABLE.items():
            if re.fullmatch(pattern, key):
                # Copied into nn.Linear's own [out, in] layout, not a transposed view: kernels that
                # take that layout (oneDNN's fused c_fc + GELU) would re-lay a view out at every call.
                out[re.sub(pattern, target, key)] = tensor.T.contiguous() if conv1d and CONV1D.fullmatch(key) else tensor
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in checkpoint; expected GPT-2 / nanoGPT parameter names")
    if lm_head is not None and "embed.W_E" in out and not torch.equal(lm_head, out["embed.W_E"]):
        raise CheckpointError("lm_head.weight differs from wte.weight: untied unembeddings are not supported")
    return out


def config_from_hf(hf: dict) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
    if act not in acts:
        raise CheckpointError(f"activation_function {act!r} is not supported; allowed: {sorted(acts)}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise CheckpointError(f"config.json sets {flag}, which this GPT does not implement")
    n_embd = hf.get("n_embd", 768)
    n_inner = hf.get("n_inner") or 4 * n_embd
    if n_inner % n_embd:
        raise CheckpointError(f"n_inner {n_inner} is not a multiple of n_embd {n_embd}")
    return GPTConfig(
        n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
        vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=acts[act], mlp_ratio=n_inner // n_embd,
    )


def load_directory(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Config and converted weights from a Hugging Face-format (or workbench) directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} has no config.json; a model directory needs config.json and weights")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    state = read_weights(weights_path(path))
    if raw.get("format") == FORMAT:
        state = {RENAMED_KEYS.get(k, k): v for k, v in state.items()}
        return GPTConfig.from_dict(raw["config"]), state  # stored fp16; `build` casts to the dtype asked for
    return config_from_hf(raw), convert_state_dict(state, conv1d=True)


def weights_path(folder: Path) -> Path:
    """The weights file of a model folder: the first of model.safetensors, its sharded index, pytorch_model.bin."""
    candidates = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    weights = next((folder / c for c in candidates if (folder / c).is_file()), None)
    if weights is None:
        raise ModelNotFoundError(f"{folder} has config.json but no weights: expected one of {', '.join(candidates)}")
    return weights


ACCEPTED = (
    "Accepted: a directory with config.json and model.safetensors (or pytorch_model.bin), a nanoGPT ckpt.pt "
    "written by torch.save holding only tensors, dicts, lists, numbers and strings, or a model name"
)
# torch.save's legacy (pre-1.6) format opens with this number, pickled with protocol 2.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def file_kind(path: Path) -> str:
    """What a weights file is, from its first bytes: "torch" (torch.save, zip or legacy format),
    "safetensors", or, for anything else, a phrase saying what it is ("a text file", "empty", ...)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04") or head.startswith(TORCH_LEGACY_MAGIC):
        return "torch"
    if len(head) > 8 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if not head:
        return "an empty file"
    if head[:1] == b"\x80":
        return "a Python pickle that torch.save did not write"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        text = head[: e.start].decode("utf-8") if e.start > len(head) - 4 else None  # a character cut at 4096
    if text is not None and "\x00" not in text:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (it starts {first!r})"
    return f"an unknown binary file (it starts {head[:8]!r})"


def _detail(e: Exception) -> str:
    """The first sentence of a loader's error, never PyTorch's advice to load with weights_only=False."""
    first = str(e).strip().split("\n")[0].split(". ")[0]
    return "" if "weights_only" in first or not first else f" ({type(e).__name__}: {first})"


def read_weights(path: Path) -> dict:
    """Tensors from safetensors (or a sharded index of them) or a torch.save file, never executing code.

    Anything else is a CheckpointError saying what the file is and what is accepted."""
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot read weights from {path}: not a safetensors index with a weight_map{_detail(e)}") from None
        return {k: v for shard in shards for k, v in read_weights(path.parent / shard).items()}
    try:
        kind = file_kind(path)
    except OSError as e:
        raise CheckpointError(f"cannot read weights from {path}: {type(e).__name__}: {e.strerror or e}") from None
    if kind == "safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot read weights from {path}: a safetensors file, but corrupt or truncated{_detail(e)}") from None
    if kind != "torch":
        raise CheckpointError(
            f"cannot read weights from {path}: it is {kind}, not a checkpoint: neither a PyTorch file written by "
            f"torch.save nor safetensors. {ACCEPTED}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if found and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", found.group(1)):
            what = f"it holds a Python object other than tensors ({found.group(1)})"
        else:
            what = "it holds Python objects other than tensors, or is corrupt or truncated"
        raise CheckpointError(
            f"cannot read weights from {path}: a PyTorch file, but {what}; workbench loads checkpoints weights-only "
            f"and never runs code from them. {ACCEPTED}"
        ) from None
    except Exception as e:  # a zip archive cut short, a bad record: miniz and torch raise RuntimeError and others
        raise CheckpointError(f"cannot read weights from {path}: a PyTorch file, but corrupt or truncated{_detail(e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict. {ACCEPTED}")
    return state


def load_nanogpt(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """A nanoGPT `ckpt.pt`: {"model_args": {...}, "model": state_dict}, loaded with weights_only."""
    ckpt = read_weights(path)
    if file_kind(path) == "safetensors":
        raise CheckpointError(f"{path} is a safetensors file, which holds weights but no configuration: pass the "
                              "directory that holds it with its config.json")
    if "model_args" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a nanoGPT checkpoint: it needs 'model_args' and 'model' keys, has {sorted(ckpt)[:8]}")
    args, weights = ckpt["model_args"], ckpt["model"]
    missing = [k for k in ("n_layer", "n_head", "n_embd") if not isinstance(args, dict) or k not in args]
    if missing:
        raise CheckpointError(f"{path}: model_args lacks {', '.join(missing)}; a nanoGPT checkpoint's model_args "
                              "holds n_layer, n_head, n_embd (and block_size, vocab_size, bias)")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: 'model' is not a state dict (a dict of parameter name -> tensor)")
    cfg = GPTConfig(
        n_layer=args["n_layer"], n_head=args["n_head"], n_embd=args["n_embd"],
        vocab_size=args.get("vocab_size", 50304), block_size=args.get("block_size", 1024),
        bias=args.get("bias", True), activation="gelu",  # nanoGPT's model.py uses exact nn.GELU()
    )
    return cfg, convert_state_dict(weights, conv1d=False)
