"""answer_nll: batched, length-sorted, logits only at the answer positions; every item's value must
equal a plain unpadded forward of that item alone, in input order."""

from __future__ import annotations

import pytest
import torch

from conftest import save_tiny_model

CONTEXTS = ["how do i make a cake", "hello", "what is the capital of france please explain it to me",
            "write a poem about the ocean", "two plus two"]
ANSWERS = ["first you can make it", "hello world thanks", "paris", "the ocean is blue and it is not",
           "four"]


def reference(model, tok, ctx: str, ans: str) -> tuple[float, int]:
    c = tok(ctx, add_special_tokens=False)["input_ids"]
    a = tok(ans, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([c + a])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    return float(nll[len(c) - 1:].sum()), len(a)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(1, 4096), (2, 4096), (5, 4096), (5, 20)])
def test_each_item_equals_an_unpadded_forward(tmp_path, arch, batch_size, max_batch_tokens):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fgsn.evaluate.nll import answer_nll

    path = save_tiny_model(tmp_path / arch, arch)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    got = answer_nll(model, tok, CONTEXTS, ANSWERS, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    assert len(got) == len(CONTEXTS)
    for (g, n), ctx, ans in zip(got, CONTEXTS, ANSWERS, strict=True):
        want, n_want = reference(model, tok, ctx, ans)
        assert n == n_want
        assert g == pytest.approx(want, rel=1e-4, abs=1e-4)
