"""Checkpoints: safetensors + JSON round trips, clear errors on broken folders, atomic saves, no pickle."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open

from model import TinyLLM, checkpoint
from model.checkpoint import CheckpointError
from model.config import ModelConfig
from model.runner import Runner
from model.sequence import Sequence
from support import TINY_CONFIG, tiny_model

IDS = torch.tensor([list(b"To be, or not to be: \xc3\xa9\xe6\x97\xa5")])


def logits_of(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(IDS)[0]


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model(seed=3)
    checkpoint.save(tmp_path / "ck", model, training={"step": 7})
    loaded = checkpoint.load_model(tmp_path / "ck")
    assert loaded.config == model.config
    assert not loaded.training, "loaded in eval mode"
    # bitwise: the same weights (bitwise, below) through the same ops at the same shapes
    assert torch.equal(logits_of(loaded), logits_of(model))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert checkpoint.load_training(tmp_path / "ck") == {"step": 7}
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "training.json"]
    assert json.loads((tmp_path / "ck" / "config.json").read_text()) == model.config.to_dict()


def test_fixture_checkpoint_loads_through_the_public_api(tiny_checkpoint):
    llm = TinyLLM.load(tiny_checkpoint, device="cpu", dtype="float32")
    assert llm.config == TINY_CONFIG
    assert torch.equal(logits_of(llm.model), logits_of(tiny_model(seed=0)))
    assert llm.training_info["step"] == 0
    maps = llm.attention("abc")
    assert maps.shape == (TINY_CONFIG.n_layer, TINY_CONFIG.n_head, 3, 3)


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny_model(seed=4, tie_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    checkpoint.save(tmp_path / "tied", model, training={})
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys(), "the shared matrix is stored once"
    loaded = checkpoint.load_model(tmp_path / "tied")
    assert loaded.config.tie_embeddings
    assert loaded.lm_head.weight is loaded.embed_tokens.weight, "still tied after loading"
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert loaded.num_params() == model.num_params()


def test_load_in_bfloat16(tiny_checkpoint):
    model = checkpoint.load_model(tiny_checkpoint, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(logits_of(model).float(), logits_of(tiny_model(seed=0)), atol=0.05, rtol=0.05)


def test_truncated_weights_raise_checkpoint_error_naming_the_file(tiny_checkpoint, tmp_path):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    weights = ck / "model.safetensors"
    data = weights.read_bytes()
    for size in (len(data) - 100, len(data) // 2, 5, 0):
        weights.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="model.safetensors") as e:
            checkpoint.load_model(ck)
        assert str(weights) in str(e.value)


def test_corrupt_but_complete_weights_raise_naming_the_file(tiny_checkpoint, tmp_path):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    weights = ck / "model.safetensors"
    data = weights.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    garbage_header = data[:8] + bytes(range(97, 97 + 26)) * 2 + data[8 + 52 :]  # same size, header not JSON
    huge_header = (2**40).to_bytes(8, "little") + data[8:]
    nan_weights = data[: 8 + header_len] + b"\xff" * (len(data) - 8 - header_len)  # 0xffffffff is a NaN float32
    for corrupt, says in ((garbage_header, "unreadable"), (huge_header, "unreadable"), (nan_weights, "NaN")):
        assert len(corrupt) == len(data)
        weights.write_bytes(corrupt)
        with pytest.raises(CheckpointError, match=says) as e:
            checkpoint.load_model(ck)
        assert str(weights) in str(e.value)


def test_config_not_matching_the_weights_raises(tiny_checkpoint, tmp_path):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    (ck / "config.json").write_text(json.dumps({**TINY_CONFIG.to_dict(), "d_model": 64, "mlp_hidden": 128}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*does not match config\.json") as e:
        checkpoint.load_model(ck)
    assert "embed_tokens.weight" in str(e.value), "the message says which tensor is off"

    (ck / "config.json").write_text(json.dumps({**TINY_CONFIG.to_dict(), "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensors \['layers\.2\."):
        checkpoint.load_model(ck)

    (ck / "config.json").write_text(json.dumps({**TINY_CONFIG.to_dict(), "tie_embeddings": True}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['lm_head.weight'\]"):
        checkpoint.load_model(ck)


def test_invalid_config_raises_naming_config_json(tiny_checkpoint, tmp_path):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    for bad in (
        {**TINY_CONFIG.to_dict(), "n_head": 3},  # d_model 32 not divisible by 3
        {**TINY_CONFIG.to_dict(), "colour": "blue"},
    ):
        (ck / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="config.json"):
            checkpoint.load_model(ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        checkpoint.load_model(ck)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_file_raises_naming_it(tiny_checkpoint, tmp_path, missing):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    (ck / missing).unlink()
    with pytest.raises(CheckpointError, match=missing) as e:
        checkpoint.load_model(ck)
    assert str(ck / missing) in str(e.value)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        checkpoint.load_model(tmp_path / "nowhere")
    assert not checkpoint.exists(tmp_path / "nowhere")


def test_interrupted_save_is_recovered_by_resolve(tiny_checkpoint, tmp_path):
    """A kill between 'DIR -> DIR.old' and 'DIR.tmp -> DIR' leaves only DIR.old (and maybe a partial DIR.tmp)."""
    old = copy_checkpoint(tiny_checkpoint, tmp_path / "ck.old")
    (tmp_path / "ck.tmp").mkdir()
    (tmp_path / "ck.tmp" / "config.json").write_text("{}")  # a half-written new checkpoint
    ck = tmp_path / "ck"
    assert checkpoint.resolve(ck) == old
    assert checkpoint.exists(ck)
    assert torch.equal(logits_of(checkpoint.load_model(ck)), logits_of(tiny_model(seed=0)))
    assert TinyLLM.load(ck, device="cpu").training_info["step"] == 0

    # the next save completes the swap and clears the leftovers
    checkpoint.save(ck, tiny_model(seed=5), training={"step": 1})
    assert checkpoint.resolve(ck) == ck
    assert not old.exists() and not (tmp_path / "ck.tmp").exists()
    assert torch.equal(logits_of(checkpoint.load_model(ck)), logits_of(tiny_model(seed=5)))


def test_an_empty_folder_does_not_hide_the_old_checkpoint(tiny_checkpoint, tmp_path):
    copy_checkpoint(tiny_checkpoint, tmp_path / "ck.old")
    (tmp_path / "ck").mkdir()
    assert checkpoint.resolve(tmp_path / "ck") == tmp_path / "ck.old"


def test_resave_replaces_atomically(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(ck, tiny_model(seed=1), training={"step": 1}, optimizer_state={"x": torch.ones(2)})
    checkpoint.save(ck, tiny_model(seed=2), training={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "no .tmp or .old left behind"
    assert checkpoint.load_training(ck) == {"step": 2}
    assert not (ck / "optimizer.pt").exists(), "a save replaces the whole folder"
    assert torch.equal(logits_of(checkpoint.load_model(ck)), logits_of(tiny_model(seed=2)))


def test_loading_never_unpickles(tiny_checkpoint, tmp_path, monkeypatch):
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    torch.save({"optimizer": {}}, ck / "optimizer.pt")  # a pickle is present, and must not be read

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a checkpoint")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    for module, name in [(torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads")]:
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    with pytest.raises(AssertionError, match="unpickling"):  # the trap works
        torch.load(ck / "optimizer.pt", weights_only=True)
    model = checkpoint.load_model(ck)
    llm = TinyLLM.load(ck, device="cpu")
    assert torch.equal(logits_of(model), logits_of(llm.model))
    assert torch.equal(logits_of(model), logits_of(tiny_model(seed=0)))


def test_config_round_trip_and_validation(tmp_path):
    cfg = ModelConfig(context_length=128, n_layer=3, n_head=4, d_model=64, mlp_hidden=96, tie_embeddings=True)
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown config fields: colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(vocab_size=300)
    with pytest.raises(ValueError, match="even"):
        ModelConfig(d_model=36, n_head=4)  # head_dim 9: rotary embeddings rotate pairs


def test_save_does_not_write_caches_or_compile_prefixes(tmp_path):
    model = tiny_model()
    Runner(model, max_batch=2).decode([Sequence([1, 2, 3], 3)])  # fused projections, a cache in use
    checkpoint.save(tmp_path / "ck", model, training={})
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(tiny_model().state_dict())
    assert not any("caches" in k or k.startswith("_orig_mod") or "rope" in k for k in keys)
    assert os.path.getsize(tmp_path / "ck" / "model.safetensors") < 4 * tiny_model().num_params() + 10_000
