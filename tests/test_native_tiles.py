"""The native step's int8 matrix product in tiles (model/native/kernels.h): on every kernel path this CPU runs, on
shapes that fill no tile evenly, it gives the scalar reference's bits, the contract's arithmetic written out in
torch, and each entry's row alone the same bits as among any neighbours."""

from __future__ import annotations

import pytest
import torch

from model.native import step as native

pytestmark = pytest.mark.native  # fails instead of skipping under TINYLLM_REQUIRE_NATIVE=1 (conftest.py)

# (output rows, inputs, group): rows that fill no block of 4, 16 or 32 rows, and one that does
SHAPES = [(1, 32, 32), (5, 64, 32), (17, 64, 64), (33, 96, 32), (50, 192, 64), (64, 128, 64)]
ENTRIES = [1, 2, 3, 4, 5, 7, 9, 17]  # tiles hold up to 4 entries: every remainder, and more than one tile


def matrix(rows: int, inputs: int, group: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (rows, inputs), generator=g, dtype=torch.int8)  # -128 included: read as -127
    scales = torch.rand(rows, inputs // group, generator=g) * 0.02 + 1e-4
    return q, scales


def activations(entries: int, inputs: int, seed: int) -> torch.Tensor:
    x = torch.randn(entries, inputs, generator=torch.Generator().manual_seed(seed)) * 3
    x[0, :7] = 0.0  # zeros, and a group of tiny values beside large ones
    if entries > 1:
        x[1, : inputs // 2] *= 1e-3
    return x


def contract(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """kernels.h's arithmetic, written out: activations quantized per group (the scalar quantizer), each group's
    int8 products summed exactly, then acc = acc + float(sum) * (activation scale * weight scale), group after
    group, in float32."""
    w = q.clamp(min=-127).long()
    acc = torch.zeros(x.shape[0], q.shape[0])
    for g in range(x.shape[1] // group):
        cols = slice(g * group, (g + 1) * group)
        parts = [native._step.quantize_group(row[cols].contiguous(), "scalar") for row in x]
        xq = torch.stack([p[0] for p in parts]).long()
        xscale = torch.tensor([p[1] for p in parts], dtype=torch.float32)
        sums = (xq @ w[:, cols].T).float()  # exact: |sum| < 2^24
        acc = acc + sums * (xscale[:, None] * scales[:, g][None, :])
    return acc


@pytest.mark.parametrize("rows,inputs,group", SHAPES)
def test_every_path_gives_the_contracts_bits_for_any_entry_count(rows, inputs, group):
    q, scales = matrix(rows, inputs, group, seed=rows)
    for entries in ENTRIES:
        x = activations(entries, inputs, seed=entries)
        expected = contract(x, q, scales, group)
        for kernels in native.kernels_here():
            got, _ = native._step.q8_matmul(x, q, scales, group, kernels)
            assert torch.equal(got, expected), (kernels, entries)


@pytest.mark.parametrize("kernels", native.kernels_here())
def test_an_entrys_row_is_the_same_alone_and_in_any_tile(kernels):
    """Entry e of 17 (in a tile of 4, or in the last tile of 1) gives the bits it gives alone."""
    rows, inputs, group = 50, 192, 64
    q, scales = matrix(rows, inputs, group, seed=1)
    x = activations(17, inputs, seed=2)
    together, _ = native._step.q8_matmul(x, q, scales, group, kernels)
    for e in (0, 3, 4, 15, 16):
        alone, _ = native._step.q8_matmul(x[e : e + 1].contiguous(), q, scales, group, kernels)
        assert torch.equal(together[e : e + 1], alone), e


def test_the_paths_compared_include_a_tiled_one_where_the_cpu_has_one():
    paths = native.kernels_here()
    assert paths[-1] == "scalar"
    if not native._step.cpu_has("avx2"):
        pytest.skip("this CPU runs only the scalar kernels")
    assert "avx2" in paths
