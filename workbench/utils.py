"""TransformerLens's `utils` names that ported notebooks call: `get_act_name` (our `act_name`, one
function under TransformerLens's name), `test_prompt`, `get_device`, `to_numpy` and `get_corner`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.hooks.names import act_name
from workbench.models.factored_matrix import FactoredMatrix
from workbench.models.loading import resolve_device

get_act_name = act_name


def get_device() -> str:
    """The device name a model loads on by default: "cuda" when a GPU is available, else "cpu" (the
    default of `load_model` / `from_pretrained`). TransformerLens's picks "mps" too, but only when the
    environment variable TRANSFORMERLENS_ALLOW_MPS=1 is set; this never does."""
    return str(resolve_device(None))


def to_numpy(tensor: Tensor | np.ndarray | list | tuple | int | float | bool | str) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU; bfloat16 as float32, which NumPy lacks), a
    list, tuple or scalar; an array is returned as it is. Anything else is an InputError."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if isinstance(tensor, (list, tuple, int, float, bool, str)):
        return np.array(tensor)
    raise InputError(f"to_numpy takes a tensor, array, list, tuple or scalar, got {type(tensor).__name__}")


def get_corner(tensor: Tensor | FactoredMatrix, n: int = 3) -> Tensor | FactoredMatrix:
    """The first `n` entries along every axis (`tensor[:n, :n, ...]`), for printing a glance at a big
    tensor. A FactoredMatrix gives the FactoredMatrix of that corner, as in TransformerLens (its
    `get_corner(n)` method gives the corner of the product as a tensor)."""
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


@torch.no_grad()
def test_prompt(
    prompt: str,
    answer: str | list[str],
    model,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> None:
    """Print how the model ranks `answer` after `prompt`, as TransformerLens's `utils.test_prompt` prints it.

    For each answer token: its rank among all tokens (0 = the model's top prediction), its logit and
    its probability at the position before it, then the `top_k` tokens there. A list of answers
    compares their first tokens at the next position. Prints; returns None."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    multiple = len(answers) > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    if multiple:  # one next token per answer
        answer_tokens = torch.cat([model.to_tokens(a, prepend_bos=False)[:, :1] for a in answers])
    else:
        answer_tokens = model.to_tokens(answers, prepend_bos=False)
    tokens = torch.cat([prompt_tokens.repeat(answer_tokens.shape[0], 1), answer_tokens], dim=1)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_strs = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    n_prompt, n_answer = len(prompt_str), 1 if multiple else len(answer_strs[0])
    if print_details:
        print("Tokenized prompt:", prompt_str)
        print("Tokenized answers:" if multiple else "Tokenized answer:", answer_strs if multiple else answer_strs[0])
    logits = model(tokens)
    probs = logits.softmax(dim=-1)
    ranks = []
    for index in range(n_prompt, n_prompt + n_answer):
        wanted = tokens[:, index]
        wanted_strs = [a[index - n_prompt] for a in answer_strs]
        token_probs = probs[:, index - 1]  # the prediction for position `index` is made one position earlier
        sorted_probs, order = token_probs.sort(descending=True)
        answer_ranks = order.argsort(-1)[range(len(answers)), wanted.cpu()].tolist()
        ranks.append(list(zip(wanted_strs, answer_ranks)))
        if print_details:
            print(f"Performance on answer token{'s' if len(answers) > 1 else ''}:")
            for i in range(len(answers)):
                print(f"Rank: {answer_ranks[i]: <8} Logit: {logits[i, index - 1, wanted[i]].item():5.2f} "
                      f"Prob: {token_probs[i, wanted[i]].item():6.2%} Token: |{wanted_strs[i]}|")
            for i in range(top_k):
                print(f"Top {i}th token. Logit: {logits[0, index - 1, order[0, i]].item():5.2f} "
                      f"Prob: {sorted_probs[0, i].item():6.2%} Token: |{model.to_string(order[0, i])}|")
    print("Ranks of the answer tokens:", ranks if multiple else [r[0] for r in ranks])
