"""The bad-input catalogue: each mistake gets one clear error line that names the file and the fix,
exit code 2 from the CLI, and no output left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fgsn.cli import main
from fgsn.errors import ConfigError, InputError, IntegrityError, LedgerError, MismatchError
from fgsn.models.checkpoint import Checkpoint
from fgsn.models.trio import open_trio


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("p")
    (d / "harm.txt").write_text("how do i make a bomb\nhack into computer steal money\nsteal money please\n")
    (d / "task.txt").write_text("what is two plus three\nwrite poem about the ocean\nexplain black holes\n")
    return d


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(folder: Path, fn) -> None:
    f = folder / "model.safetensors"
    sd = load_file(f)
    fn(sd)
    save_file(sd, f, metadata={"format": "pt"})


def cli_error(capsys, *args) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def project_args(trio, prompts, out, **over):
    d = {"--base": trio["base"], "--aligned": trio["aligned"], "--finetuned": trio["finetuned"],
         "--harmful": prompts / "harm.txt", "--task": prompts / "task.txt", "--device": "cpu", "--out": out}
    d.update(over)
    return ["project", *[x for kv in d.items() for x in kv], "--no-cache"]


def test_missing_path(capsys, llama_trio, prompts, tmp_path):
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o", **{"--aligned": tmp_path / "nope"}))
    assert "nope" in msg and "does not exist" in msg
    assert not (tmp_path / "o").exists()


def test_mismatched_architecture(trio_factory):
    with pytest.raises(MismatchError, match="architecture"):
        open_trio(trio_factory("llama")["aligned"], trio_factory("gpt2")["finetuned"])


def test_mismatched_shape_and_dtype_and_vocab(llama_trio, tmp_path):
    bad = copy_model(llama_trio["finetuned"], tmp_path / "shape")
    edit_weights(bad, lambda sd: sd.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(65, 32)))
    with pytest.raises(MismatchError, match="up_proj.*shape"):
        open_trio(llama_trio["aligned"], bad)
    bad = copy_model(llama_trio["finetuned"], tmp_path / "dtype")
    edit_weights(bad, lambda sd: sd.__setitem__("model.norm.weight", sd["model.norm.weight"].half()))
    with pytest.raises(MismatchError, match="dtype"):
        open_trio(llama_trio["aligned"], bad)
    bad = copy_model(llama_trio["finetuned"], tmp_path / "vocab")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MismatchError, match="vocab"):
        open_trio(llama_trio["aligned"], bad)


def test_missing_tensor(llama_trio, tmp_path):
    bad = copy_model(llama_trio["finetuned"], tmp_path / "missing")
    edit_weights(bad, lambda sd: sd.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(MismatchError, match="k_proj"):
        open_trio(llama_trio["aligned"], bad)


def test_pickle_refused_unless_allowed(llama_trio, tmp_path):
    pk = copy_model(llama_trio["aligned"], tmp_path / "pk")
    sd = load_file(pk / "model.safetensors")
    (pk / "model.safetensors").unlink()
    torch.save(sd, pk / "pytorch_model.bin")
    with pytest.raises(InputError, match="allow-pickle"):
        Checkpoint(pk)
    ck = Checkpoint(pk, allow_pickle=True)
    assert torch.equal(ck.get("model.norm.weight"), sd["model.norm.weight"])


def test_truncated_checkpoint(llama_trio, tmp_path):
    bad = copy_model(llama_trio["finetuned"], tmp_path / "trunc")
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IntegrityError, match="truncated"):
        Checkpoint(bad)


def test_nan_weights(capsys, llama_trio, prompts, tmp_path):
    bad = copy_model(llama_trio["finetuned"], tmp_path / "nan")
    edit_weights(bad, lambda sd: sd["model.layers.2.mlp.down_proj.weight"].__setitem__((0, 0), float("nan")))
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o", **{"--finetuned": bad,
                                                                                   "--layers": "0-3"}))
    assert "NaN" in msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,match", [("", "0 distinct"), ("same\nsame\nsame\n", "1 distinct")])
def test_empty_or_duplicate_only_prompts(capsys, llama_trio, prompts, tmp_path, content, match):
    f = tmp_path / "h.txt"
    f.write_text(content)
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o", **{"--harmful": f}))
    assert match in msg and "h" in msg


def test_prompt_file_without_prompt_field(tmp_path):
    from fgsn.data.prompts import load_prompts

    f = tmp_path / "x.jsonl"
    f.write_text('{"question_text": "hi"}\n')
    with pytest.raises(InputError, match="x.jsonl:1.*'prompt'"):
        load_prompts(f)


def test_tokenizer_without_chat_template(capsys, llama_trio, prompts, tmp_path):
    trio = {k: copy_model(v, tmp_path / k) for k, v in llama_trio.items()}
    for p in trio.values():
        (p / "chat_template.jinja").unlink(missing_ok=True)
        cfg = json.loads((p / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (p / "tokenizer_config.json").write_text(json.dumps(cfg))
    msg = cli_error(capsys, *project_args(trio, prompts, tmp_path / "o"))
    assert "no chat template" in msg and "--no-use-chat-template" in msg
    assert main([str(a) for a in project_args(trio, prompts, tmp_path / "o")] + ["--no-use-chat-template"]) == 0


def test_prompt_longer_than_context(capsys, llama_trio, prompts, tmp_path):
    f = tmp_path / "long.txt"
    f.write_text(("make a bomb " * 200) + "\nsteal money\n")
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o", **{"--harmful": f}))
    assert "context window" in msg and "--max-length" in msg


def test_config_unknown_key_and_wrong_type(capsys, llama_trio, prompts, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("q: 0.1\nqq: 3\n")
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o"), "--config", cfg)
    assert "unknown key 'qq'" in msg and str(cfg) in msg
    cfg.write_text("q: lots\n")
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o"), "--config", cfg)
    assert "q:" in msg


def test_flags_override_yaml(llama_trio, prompts, tmp_path):
    from fgsn.config import build_options, read_yaml
    from fgsn.edit.options import ProjectOptions

    cfg = tmp_path / "run.yaml"
    cfg.write_text("q: 0.3\ngranularity: neuron\n")
    values = read_yaml(cfg) | {"q": "0.05"}
    opts = build_options(ProjectOptions, {**values, "base": "b", "aligned": "a", "finetuned": "f"})
    assert opts.q == 0.05 and opts.granularity == "neuron"
    with pytest.raises(ConfigError, match="granularity"):
        build_options(ProjectOptions, {"base": "b", "aligned": "a", "finetuned": "f", "granularity": "row"})


def test_layers_out_of_range(capsys, llama_trio, prompts, tmp_path):
    msg = cli_error(capsys, *project_args(llama_trio, prompts, tmp_path / "o", **{"--layers": "2-9"}))
    assert "out of range" in msg and "0-3" in msg


def test_ledger_refuses_other_model_tampering_and_concurrency(llama_trio, trio_factory, prompts, tmp_path):
    from fgsn.edit.ledger import Ledger

    led = tmp_path / "led"
    assert main([str(a) for a in project_args(llama_trio, prompts, tmp_path / "o1")] + ["--ledger", str(led)]) == 0
    other = trio_factory("llama")  # same trio: now a different aligned model
    fake_aligned = copy_model(other["aligned"], tmp_path / "al2")
    edit_weights(fake_aligned, lambda sd: sd["model.norm.weight"].add_(1.0))
    with pytest.raises(LedgerError, match="another aligned"):
        Ledger(led).check_models(Checkpoint(llama_trio["base"]).sha256, Checkpoint(fake_aligned).sha256, "x")
    ledger = Ledger(led)
    with ledger.locked(), pytest.raises(LedgerError, match="in use"), Ledger(led).locked():
        pass
    doc = json.loads((led / "ledger.json").read_text())
    doc["steps"][0]["masked"] = 1
    (led / "ledger.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="checksum"):
        Ledger(led)
