"""TransformerLens's `utils` names that ported notebooks call: `get_act_name` (our `act_name`, one
function under TransformerLens's name) and `test_prompt`."""

from __future__ import annotations

import torch

from workbench.hooks.names import act_name

get_act_name = act_name


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
