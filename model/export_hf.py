"""Export a checkpoint as a Hugging Face `LlamaForCausalLM` folder that `from_pretrained` loads.

    tinyllm-export-hf checkpoints/shakespeare hf/shakespeare    # config.json, model.safetensors, generation_config.json
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf/shakespeare')"

Our parameter names already are Llama's, less the "model." prefix of the decoder stack, and the maths is
the same (see model/model.py), so the export is a renaming; weights are written as float32. Token ids are
bytes, so there is no tokenizer to ship: feed `list(text.encode("utf-8"))` as input_ids. Reads JSON and
safetensors only (no pickle); transformers itself is not needed to export.
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
    files = [out_dir / HF_CONFIG, out_dir / HF_WEIGHTS, out_dir / HF_GENERATION_CONFIG]
    files[0].write_text(json.dumps(hf_config(cfg), indent=2) + "\n")
    # config.json says float32; training saves float32 already, so this copies nothing there
    weights = {k: v.float().contiguous() for k, v in to_hf_state_dict(state, cfg).items()}
    save_file(weights, str(files[1]), metadata={"format": "pt"})
    files[2].write_text(json.dumps(hf_generation_config(cfg), indent=2) + "\n")
    return files


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
