import torch

from workbench.models.tokenizer import gpt2_tokenizer


def test_hello_world_ids():
    assert gpt2_tokenizer().encode("Hello world") == [15496, 995]


def test_matches_transformers_tokenizer(hf_tokenizer):
    texts = ["Hello world, When John and Mary went to the store", "  spaces\n\nand newlines\t", "émoji 🙂 ok",
             "It's 2024; they'll've 12.5%"]
    enc = gpt2_tokenizer()
    for t in texts:
        assert enc.encode(t) == hf_tokenizer(t)["input_ids"], t


def test_model_text_helpers(model):
    toks = model.to_tokens("Hello world")
    assert toks.tolist() == [[50256, 15496, 995]]
    assert model.to_tokens("Hello world", prepend_bos=False).tolist() == [[15496, 995]]
    assert model.to_str_tokens("Hello world") == ["<|endoftext|>", "Hello", " world"]
    assert model.to_string(toks[0, 1:]) == "Hello world"
    batch = model.to_tokens(["a b c", "a"])
    assert batch.shape == (2, 4) and batch[1, 2:].tolist() == [50256, 50256]
    assert model.to_single_token(" Mary") == 5335
    assert torch.equal(model(["Hello world"]), model(toks))
