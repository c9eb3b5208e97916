"""Shared by the benchmarks: the machine's description and writing results into docs/benchmarks/."""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "shakespeare"
# the shared folder beside the checkouts (../shared, as in the README's commands), or $TINYLLM_SHARED
SHARED = Path(os.environ.get("TINYLLM_SHARED", ROOT.parent / "shared"))
SHAKESPEARE_TEXT = SHARED / "data" / "tinyshakespeare.txt"
PROMPT = b"ROMEO:\nBut soft, what light through yonder window breaks?\n"  # the decode benchmarks' prompt


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def machine() -> str:
    parts = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name()}")
    parts.append(f"Python {platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    return "; ".join(parts)


def rss_mb(pid: int) -> float:
    """A process's resident memory, in MB (MiB), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:,.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_doc(name: str, title: str, body: str) -> Path:
    DOCS.mkdir(parents=True, exist_ok=True)
    path = DOCS / f"{name}.md"
    path.write_text(f"# {title}\n\nMachine: {machine()}\n\n{body.strip()}\n")
    print(f"wrote {path}")
    return path


def plot(name: str, draw) -> str:
    """Save a figure drawn by draw(ax) as docs/benchmarks/NAME.png; return its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    DOCS.mkdir(parents=True, exist_ok=True)
    fig.savefig(DOCS / f"{name}.png")
    plt.close(fig)
    return f"{name}.png"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: torch.device = torch.device("cpu"), repeats: int = 5) -> float:
    """Seconds one call of fn takes: the median of `repeats` calls, the device synchronised around each."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return median(times)


def copy_bandwidth(device: torch.device = torch.device("cpu"), mbytes: int = 512) -> float:
    """Bytes moved per second (read + write) by a large tensor copy: the memory system's practical rate."""
    src = torch.empty(mbytes << 20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer but the embedding table (a lookup
    reads one row of it) and the rotary tables."""
    skip = ("embed_tokens.", "rope_")
    tensors = {name: t for name, t in model.state_dict(keep_vars=True).items() if not name.startswith(skip)}
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors.values()}.values())


class HuggingFace:
    """The baseline: transformers' LlamaForCausalLM on the checkpoint's weights (float32), generate() at batch 1."""

    def __init__(self, path, device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        from transformers import LlamaConfig, LlamaForCausalLM

        from model import checkpoint
        from model.export_hf import hf_config, to_hf_state_dict

        cfg = checkpoint.load_config(path)
        hf = LlamaForCausalLM(LlamaConfig.from_dict(hf_config(cfg)))
        state = to_hf_state_dict(checkpoint.load_state_dict(path, cfg), cfg)
        hf.load_state_dict(state, strict=not cfg.tie_embeddings)
        self.model = hf.to(device=device, dtype=dtype).eval()
        self.model.generation_config.max_length = None
        self.device = device

    @torch.inference_mode()
    def generate(self, prompt: bytes, n: int) -> tuple[float, list[int]]:
        """tokens/s of n greedy new tokens after prompt, and the tokens."""
        ids = torch.tensor([list(prompt)], device=self.device)
        sync(self.device)
        t = time.perf_counter()
        out = self.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync(self.device)
        return n / (time.perf_counter() - t), out[0, len(prompt) :].tolist()
