"""Shared fixtures. jaxtyping's runtime shape checking (with beartype) is on for all of workbench."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib  # noqa: E402
import pkgutil  # noqa: E402

from jaxtyping import install_import_hook  # noqa: E402

# Every module of the package, found by walking it, so a new module is checked without being listed.
# One is not imported: workbench.__main__ runs the CLI when imported (`python -m workbench`); it is
# two lines that call workbench.cli.main, and workbench.cli is checked.
UNCHECKED = {"workbench.__main__": "runs the CLI on import; its only code is a call of workbench.cli.main"}

with install_import_hook("workbench", "beartype.beartype"):
    import workbench  # noqa: E402

    CHECKED_MODULES = ["workbench"] + [
        info.name for info in pkgutil.walk_packages(workbench.__path__, prefix="workbench.")
        if info.name not in UNCHECKED
    ]
    for _name in CHECKED_MODULES:
        importlib.import_module(_name)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

TOKENIZER_DIR = Path(__file__).parent / "data" / "gpt2-tokenizer"


def random_hf_model(seed: int = 0, **config):
    """A transformers GPT2LMHeadModel with random weights, LayerNorms and biases included."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    defaults = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64)
    model = GPT2LMHeadModel(GPT2Config(**{**defaults, **config})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
            elif ".ln_" in name or "ln_f" in name:
                p.normal_(1.0, 0.1)
    return model


@pytest.fixture(scope="session")
def hf_small():
    return random_hf_model()


@pytest.fixture(scope="session")
def hf_small_dir(hf_small, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_small")
    hf_small.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model(hf_small_dir):
    return workbench.load_model(hf_small_dir, device="cpu")


@pytest.fixture(scope="session")
def hf_tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def bridge(hf_small, hf_tokenizer):
    """TransformerLens 4.x on the same weights, legacy hook names, no weight processing."""
    from transformer_lens.model_bridge import TransformerBridge

    import copy

    # The bridge re-wires the HF modules it wraps, so give it its own copy.
    b = TransformerBridge.boot_transformers("gpt2", hf_model=copy.deepcopy(hf_small), tokenizer=hf_tokenizer)
    b.enable_compatibility_mode(no_processing=True)
    return b


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 50257, (3, 12), generator=g)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer GPT saved like a bundled model (fp16 safetensors), loadable by path."""
    from workbench.models.bundled import save_bundled

    torch.manual_seed(0)
    model = workbench.GPT(workbench.GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64))
    path = tmp_path_factory.mktemp("tiny_model")
    save_bundled(model, path, card={"note": "random weights, for tests"})
    return path


@pytest.fixture(scope="session")
def experiment_model(tiny_model_dir) -> str:
    """The model the experiment tests run on: the bundled default model when it is there, else a tiny one."""
    from workbench.models.bundled import DEFAULT_BUNDLED, bundled_names

    return DEFAULT_BUNDLED if DEFAULT_BUNDLED in bundled_names() else str(tiny_model_dir)
