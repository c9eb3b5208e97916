"""Export a checkpoint as a Hugging Face `LlamaForCausalLM` folder that `from_pretrained` loads.

    tinyllm-export-hf checkpoints/shakespeare hf/shakespeare
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf/shakespeare')('ROMEO:'))"

Our parameter names already are Llama's, less the "model." prefix of the decoder stack, and the maths is
the same (see model/model.py), so the export is a renaming; weights are written as float32. The tokenizer
(tokenizer.json, for the `tokenizers` library) maps text to its UTF-8 bytes, id = byte value, as
ByteTokenizer does. Reads JSON and safetensors only (no pickle); transformers itself is not needed to export.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import checkpoint
from model.config import ModelConfig

HF_CONFIG, HF_WEIGHTS, HF_GENERATION_CONFIG = "config.json", "model.safetensors", "generation_config.json"
HF_TOKENIZER, HF_TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"


class ExportError(Exception):
    """An export that cannot be done; reported as one line."""


def hf_config(cfg: ModelConfig) -> dict:
    """The `LlamaConfig` fields for `cfg`, as written to config.json (`LlamaConfig.from_dict` takes it)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,  # plain multi-head attention: one K/V head per query head
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        # transformers 4 reads rope_theta; 5 reads rope_parameters (it wins over rope_theta there)
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,  # matches Transformer._init_weights
        "torch_dtype": "float32",
        "use_cache": True,
        # bytes only: no token is reserved as BOS, EOS or padding
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def hf_generation_config(cfg: ModelConfig) -> dict:
    """Generation defaults: TinyLLM's sampler (temperature 1, no top-k/top-p), stopping at the context length."""
    return {
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "max_length": cfg.context_length,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def byte_symbols() -> list[str]:
    """The printable character that stands for each byte in a byte-level `tokenizers` vocabulary (GPT-2's table).

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7f-0xa0, 0xad) are
    moved to U+0100 on, in byte order. `tokenizers`' ByteLevel pre-tokenizer and decoder use this table.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = (b for b in range(256) if b not in printable)
    symbols = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(moved)}
    return [symbols[b] for b in range(256)]


def hf_tokenizer() -> dict:
    """tokenizer.json: id i is byte i, as in ByteTokenizer.

    The ByteLevel pre-tokenizer turns text into its UTF-8 bytes, each written as its byte_symbols()
    character, without splitting or adding a space; the BPE model has one entry per byte and no merges,
    so every byte is one token. The ByteLevel decoder turns ids back into bytes and decodes them as UTF-8
    with U+FFFD for invalid sequences (`errors="replace"`, as ByteTokenizer.decode). No added or special
    tokens: every id is a byte, and no string in the text is matched as anything but its bytes.
    """
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {symbol: byte for byte, symbol in enumerate(byte_symbols())},
            "merges": [],
        },
    }


def hf_tokenizer_config(cfg: ModelConfig) -> dict:
    """tokenizer_config.json: the fast tokenizer of tokenizer.json, with no special tokens and nothing added."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.context_length,
        # bytes only: no BOS, EOS, padding or unknown token (see the README on what tools need instead)
        "bos_token": None,
        "eos_token": None,
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        # "a ," stays "a ,": the decoded text is the bytes, not prettified
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",  # for batched generation, should a tool add a pad token
    }


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensors under `LlamaForCausalLM`'s names: "model." + name, except lm_head.weight.

    `state` is `Transformer.state_dict()` or `checkpoint.load_state_dict(...)`. With tied embeddings
    lm_head.weight is left out, as Hugging Face writes tied checkpoints (it is embed_tokens.weight).
    The tensors are shared, not copied. To fill a `LlamaForCausalLM` in memory:

        hf = LlamaForCausalLM(LlamaConfig.from_dict(hf_config(cfg)))
        hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=not cfg.tie_embeddings)

    (tied: Hugging Face's lm_head.weight already is its embed_tokens.weight, so it is the one key missing.)
    """
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[name] = tensor
        else:
            out["model." + name] = tensor
    return out


def export(ckpt, out_dir) -> list[Path]:
    """Write the Hugging Face folder for checkpoint `ckpt` into `out_dir`; return the files written."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == checkpoint.resolve(ckpt).resolve():
        raise ExportError(f"{out_dir}: is the checkpoint folder itself; its files would be overwritten")
    cfg = checkpoint.load_config(ckpt)
    state = checkpoint.load_state_dict(ckpt, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_files = {
        HF_CONFIG: hf_config(cfg),
        HF_GENERATION_CONFIG: hf_generation_config(cfg),
        HF_TOKENIZER: hf_tokenizer(),
        HF_TOKENIZER_CONFIG: hf_tokenizer_config(cfg),
    }
    for name, content in json_files.items():
        # ensure_ascii=False: the vocabulary's byte symbols stay readable characters
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # config.json says float32; training saves float32 already, so this copies nothing there
    weights = {k: v.float().contiguous() for k, v in to_hf_state_dict(state, cfg).items()}
    save_file(weights, str(out_dir / HF_WEIGHTS), metadata={"format": "pt"})
    return [out_dir / name for name in (*json_files, HF_WEIGHTS)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tinyllm-export-hf", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        type=Path,
        help="TinyLLM checkpoint folder (config.json + model.safetensors)",
    )
    p.add_argument(
        "out_dir", metavar="OUT_DIR", type=Path, help="folder to write the Hugging Face files into (created if missing)"
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        files = export(args.checkpoint, args.out_dir)
    except (ExportError, checkpoint.CheckpointError, OSError) as e:
        sys.exit(f"tinyllm-export-hf: error: {e}")
    print(f"wrote {', '.join(f.name for f in files)} to {args.out_dir}")


if __name__ == "__main__":
    main()
