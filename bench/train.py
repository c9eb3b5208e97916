"""The training race: `tinyllm-train` against nanoGPT's own train.py, the same dims, the same wall-clock budget.

    python -m bench.train --nanogpt ../nanoGPT --minutes 10                       # Tiny Shakespeare
    python -m bench.train --nanogpt ../nanoGPT --minutes 10 --text multilingual  # needs data/multilingual

nanoGPT (github.com/karpathy/nanoGPT, MIT) is a checkout you give; nothing of it is committed here. Both
trainers get the dims of nanoGPT's documented CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12,
dropout 0) and the same bytes: nanoGPT its recipe's other flags (AdamW, lr 1e-3, warmup 100, cosine to
lr/10, evaluation every 250 iterations on 20 batches) with its iteration count set, from its step rate
measured just before the race, so that its schedule ends inside the budget; TinyLLM its defaults plus
`--max-minutes`. One evaluator scores both checkpoints: the mean cross-entropy, in nats/byte, over all
non-overlapping 64-byte windows of the held-out text.

Layouts: `side-by-side` (the default) runs both at once, each on its own core with one thread, so that
both see the same machine; `sequential` runs one after the other with every core.
Results go to docs/benchmarks/training.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from bench.common import DOCS, ROOT, SHAKESPEARE_TEXT, machine, table
from model import checkpoint

DIMS = {"n_layer": 4, "n_head": 4, "d_model": 128, "context_length": 64, "batch_size": 12}
NANOGPT_RECIPE = [  # README "I only have a macbook", less --max_iters/--lr_decay_iters, which the race sets
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--dropout=0.0",
]
SHAKESPEARE = SHAKESPEARE_TEXT
MULTILINGUAL = ROOT / "data" / "multilingual"
SLICE_BYTES = 1_000_000  # the multilingual slice: about Tiny Shakespeare's size, split evenly over its languages


def shakespeare() -> tuple[bytes, bytes]:
    """Tiny Shakespeare with its conventional split: the last 10% held out."""
    data = SHAKESPEARE.read_bytes()
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:]


def whole_documents(text: bytes, limit: int) -> bytes:
    """The documents (separated by a blank line) at the start of `text` that fit in `limit` bytes."""
    end = text.rfind(b"\n\n", 0, limit)
    return text[: end + 2] if end > 0 else text[:limit]


def multilingual(corpus: Path) -> tuple[bytes, bytes]:
    """A slice of the multilingual corpus (scripts/build_corpus.py): the first documents of each language's
    training and held-out files, SLICE_BYTES in all, nine parts training to one held out."""
    langs = sorted(p.stem for p in (corpus / "train").glob("*.txt"))
    if not langs:
        sys.exit(f"no corpus in {corpus}: python scripts/build_corpus.py --out {corpus}")
    per_lang = SLICE_BYTES // len(langs)
    train = b"".join(whole_documents((corpus / "train" / f"{n}.txt").read_bytes(), per_lang * 9 // 10) for n in langs)
    val = b"".join(whole_documents((corpus / "val" / f"{n}.txt").read_bytes(), per_lang // 10) for n in langs)
    return train, val


def load_text(name: str, corpus: Path) -> tuple[bytes, bytes]:
    return shakespeare() if name == "shakespeare" else multilingual(corpus)


TEXTS = ("shakespeare", "multilingual")


def nanogpt_tokens(train: bytes, val: bytes) -> tuple[np.ndarray, int]:
    """nanoGPT's token for each byte value, and its vocabulary size: its shakespeare_char preparation (the
    sorted characters) for ASCII text, the bytes themselves otherwise (characters would not give nats/byte)."""
    if max(train + val) >= 128:
        return np.arange(256), 256
    chars = sorted(set(train + val))
    lookup = np.zeros(256, dtype=np.int64)
    lookup[chars] = np.arange(len(chars))
    return lookup, len(chars)


def prepare_nanogpt(repo: Path, train: bytes, val: bytes) -> str:
    """Write the race's text as a nanoGPT dataset (data/race/{train,val}.bin, meta.pkl) in its checkout."""
    import pickle  # nanoGPT's own format for meta.pkl; only the benchmark writes or reads it

    lookup, vocab_size = nanogpt_tokens(train, val)
    folder = repo / "data" / "race"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("val", val)):
        lookup[np.frombuffer(text, dtype=np.uint8)].astype(np.uint16).tofile(folder / f"{name}.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": vocab_size}, f)
    return "race"


def pinned(core: int | None, threads: int) -> tuple[list[str], dict]:
    """The command prefix and environment that hold a process to one core (side by side) or to all (sequential)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return (["taskset", "-c", str(core)] if core is not None else []), env


def nanogpt_command(iters: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "train.py",
        *NANOGPT_RECIPE,
        "--dataset=race",
        f"--out_dir={out}",
        f"--max_iters={iters}",
        f"--lr_decay_iters={iters}",
        "--always_save_checkpoint=True",  # its last evaluation's weights: the race scores where it ended
    ]


def nanogpt_ms_per_step(repo: Path, core: int | None, threads: int) -> float:
    """nanoGPT's own ms/iteration, read from its log over a short run (after its first few iterations)."""
    prefix, env = pinned(core, threads)
    with tempfile.TemporaryDirectory() as out:
        log = subprocess.run(
            prefix + nanogpt_command(120, Path(out)), cwd=repo, env=env, capture_output=True, text=True, check=True
        ).stdout
    times = [float(t) for t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", log)[20:] for t in [t[1]]]
    return float(np.median(times))


def tinyllm_command(train: Path, val: Path, out: Path, minutes: float, extra: list[str]) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in DIMS.items()]
    return [
        sys.executable,
        "-m",
        "model.train",
        f"--data={train}",
        f"--val-data={val}",
        f"--out={out}",
        *flags,
        f"--max-minutes={minutes}",
        *extra,
    ]


@torch.no_grad()
def held_out_loss(logits_of, ids: np.ndarray, ctx: int = 64, batch: int = 64) -> float:
    """Mean cross-entropy (nats/token) over all non-overlapping `ctx`-token windows: each window's tokens
    predict the next `ctx` tokens. `logits_of(x, y)` gives (B, T, vocab) logits."""
    starts = np.arange(0, ids.size - ctx, ctx)
    total, count = 0.0, 0
    for i in range(0, starts.size, batch):
        s = starts[i : i + batch]
        x = torch.from_numpy(np.stack([ids[j : j + ctx] for j in s]).astype(np.int64))
        y = torch.from_numpy(np.stack([ids[j + 1 : j + 1 + ctx] for j in s]).astype(np.int64))
        logits = logits_of(x, y)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total / count


def score_tinyllm(out: Path, val: bytes) -> float:
    model = checkpoint.load_model(out).eval()
    return held_out_loss(lambda x, y: model(x)[0], np.frombuffer(val, dtype=np.uint8))


def score_nanogpt(repo: Path, out: Path, train: bytes, val: bytes) -> float:
    spec = importlib.util.spec_from_file_location("nanogpt_model", repo / "model.py")  # ours is `model` too
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)  # its pickle; benchmark only
    model = nanogpt.GPT(nanogpt.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    lookup, _ = nanogpt_tokens(train, val)
    return held_out_loss(lambda x, y: model(x, y)[0], lookup[np.frombuffer(val, dtype=np.uint8)])


def nanogpt_iterations(minutes: float, ms_per_step: float) -> int:
    """Iterations for nanoGPT's schedule to end inside the budget: its step rate, plus its evaluations (2 × 20
    forward batches every 250 iterations, ~5% of the training time) and ~10 s of start-up; a multiple of 250,
    so that its last evaluation, which saves the checkpoint scored, is at its last iteration."""
    seconds = minutes * 60 - 10
    return max(250, int(seconds * 1000 / (ms_per_step * 1.05)) // 250 * 250)


def start(command: list[str], cwd: Path, log: Path, core: int | None, threads: int) -> tuple[subprocess.Popen, float]:
    prefix, env = pinned(core, threads)
    env["PYTHONPATH"] = str(ROOT)
    with open(log, "w") as f:
        return subprocess.Popen(prefix + command, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT), time.time()


def finish(started: dict[str, tuple[subprocess.Popen, float]], logs: dict[str, Path]) -> dict[str, float]:
    """Wait for every process; each one's wall time, from its start to its own exit."""
    wall = {}
    while len(wall) < len(started):
        for name, (proc, t0) in started.items():
            if name not in wall and proc.poll() is not None:
                wall[name] = time.time() - t0
                if proc.returncode != 0:
                    sys.exit(f"{proc.args[:4]} failed; its log: {logs[name]}\n{logs[name].read_text()[-2000:]}")
        time.sleep(0.05)
    return wall


def race(repo: Path, text: str, corpus: Path, minutes: float, layout: str, extra: list[str]) -> dict:
    """One race on one text: both trainers, then the one evaluator on both checkpoints."""
    train, val = load_text(text, corpus)
    work = Path(tempfile.mkdtemp(prefix=f"race-{text}-"))
    (work / "train.txt").write_bytes(train)
    (work / "val.txt").write_bytes(val)
    prepare_nanogpt(repo, train, val)
    side = layout == "side-by-side"
    cores, threads = ((0, 1), 1) if side else ((None, None), os.cpu_count())
    ms = nanogpt_ms_per_step(repo, cores[0], threads)
    iters = nanogpt_iterations(minutes, ms)
    print(f"{text}: nanoGPT {ms:.1f} ms/iteration alone -> {iters} iterations in {minutes} min", flush=True)
    nano_out, ours_out = work / "nanogpt", work / "tinyllm"
    runs = {
        "nanogpt": (nanogpt_command(iters, nano_out), repo, cores[0]),
        "tinyllm": (tinyllm_command(work / "train.txt", work / "val.txt", ours_out, minutes, extra), ROOT, cores[1]),
    }
    logs = {name: work / f"{name}.log" for name in runs}
    if side:
        wall = finish(
            {name: start(cmd, cwd, logs[name], core, threads) for name, (cmd, cwd, core) in runs.items()}, logs
        )
    else:
        wall = {}
        for name, (cmd, cwd, core) in runs.items():
            wall |= finish({name: start(cmd, cwd, logs[name], core, threads)}, logs)
    ours_steps = checkpoint.load_training(ours_out)["step"]
    result = {
        "text": text,
        "layout": layout,
        "minutes": minutes,
        "train_bytes": len(train),
        "held_out_bytes": len(val),
        "nanogpt": {"loss": score_nanogpt(repo, nano_out, train, val), "steps": iters, "wall_s": wall["nanogpt"]},
        "tinyllm": {"loss": score_tinyllm(ours_out, val), "steps": ours_steps, "wall_s": wall["tinyllm"]},
        "tinyllm_args": extra,
        "work": str(work),
    }
    for name in ("nanogpt", "tinyllm"):
        r = result[name]
        r["ms_per_step"] = 1000 * r["wall_s"] / r["steps"]
        r["within_budget"] = r["wall_s"] <= minutes * 60 * 1.05  # nanoGPT's count was set from a rate load may change
    print(json.dumps(result), flush=True)
    return result


def nanogpt_source(repo: Path) -> str:
    """Which nanoGPT ran: its commit when the checkout is a git repository, else its train.py's sha256."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "train.py sha256 " + hashlib.sha256((repo / "train.py").read_bytes()).hexdigest()[:16]


def step_profile(threads: int, steps: int = 60) -> dict:
    """Where a training step's time goes at the race's dims: forward and backward, eager and compiled (and the
    compile time), and each optimizer's update; medians over `steps` steps after a warm-up."""
    from types import SimpleNamespace

    from model.model import Transformer
    from model.train_optim import make_optimizer
    from model.train_setup import config_from_flags

    torch.set_num_threads(threads)
    flags = SimpleNamespace(**DIMS, mlp_hidden=None, tie_embeddings=False, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (DIMS["batch_size"], DIMS["context_length"]), generator=gen)
    y = torch.randint(0, 256, x.shape, generator=gen)
    model = Transformer(config_from_flags(flags))
    compiled = torch.compile(model)
    out = {}

    def forward_backward(m) -> None:
        F.cross_entropy(m(x)[0].view(-1, 256), y.view(-1)).backward()

    t = time.perf_counter()
    forward_backward(compiled)
    out["compile_s"] = time.perf_counter() - t
    for name in ("adamw", "muon"):
        opt = make_optimizer(model, SimpleNamespace(optimizer=name, lr=1e-3, muon_lr=0.02, weight_decay=0.1), x.device)
        times = {"eager": [], "compiled": [], name: []}
        for _ in range(steps + 5):
            for kind, m in (("eager", model), ("compiled", compiled)):
                t = time.perf_counter()
                forward_backward(m)
                times[kind].append(time.perf_counter() - t)
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
            opt.zero_grad()
        for kind, values in times.items():
            out.setdefault(f"{kind}_ms", float(np.median(values[5:]) * 1000))
    return out


def report(results: list[dict], source: str) -> str:
    """docs/benchmarks/training.md's results section."""
    rows = []
    for r in results:
        ours, theirs = r["tinyllm"], r["nanogpt"]
        rows.append(
            [
                r["text"],
                r["layout"],
                f"{theirs['loss']:.4f} ({theirs['steps']:,} steps, {theirs['ms_per_step']:.1f} ms/step)"
                + ("" if theirs["within_budget"] else f", **{theirs['wall_s']:.0f} s: over budget**"),
                f"{ours['loss']:.4f} ({ours['steps']:,} steps, {ours['ms_per_step']:.1f} ms/step)",
                f"{theirs['loss'] - ours['loss']:+.4f}",
                f"{ours['ms_per_step'] / theirs['ms_per_step']:.2f}",
                " ".join(r["tinyllm_args"]) or "(defaults)",
            ]
        )
    head = ["text", "layout", "nanoGPT held-out nats/byte", "TinyLLM", "TinyLLM better by", "ms/step ratio", "flags"]
    return f"{machine()}; nanoGPT {source}; {results[0]['minutes']} min each\n\n" + table(head, rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, required=True, help="a checkout of github.com/karpathy/nanoGPT")
    p.add_argument("--minutes", type=float, default=10.0, help="each trainer's wall-clock budget")
    p.add_argument("--text", choices=TEXTS, action="append", help="repeatable (default: shakespeare)")
    p.add_argument("--layout", choices=["side-by-side", "sequential"], default="side-by-side")
    p.add_argument("--corpus", type=Path, default=MULTILINGUAL, help="the multilingual corpus folder")
    p.add_argument("--write", action="store_true", help="append the results to docs/benchmarks/training.md")
    p.add_argument(
        "--profile", action="store_true", help="only time a step's parts (see step_profile), 1 and 2 threads"
    )
    args, extra = p.parse_known_args(argv)  # the rest goes to tinyllm-train, e.g. --optimizer adamw
    if args.profile:
        for threads in (1, 2):
            print(f"{threads} thread(s):", json.dumps({k: round(v, 2) for k, v in step_profile(threads).items()}))
        return
    repo = args.nanogpt.resolve()
    results = [race(repo, t, args.corpus, args.minutes, args.layout, extra) for t in args.text or ["shakespeare"]]
    text = report(results, nanogpt_source(args.nanogpt))
    print(text)
    if args.write:
        with open(DOCS / "training.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
