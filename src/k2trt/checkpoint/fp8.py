"""Block-FP8 (e4m3, 128x128 blocks) quantization as DeepSeek-V3 and Kimi K2 store it.

Stored: `Wq` float8_e4m3fn and `scale_inv` float32 of shape (ceil(out/b), ceil(in/b)).
Dequant: W[i, j] = float(Wq[i, j]) * scale_inv[i // b, j // b] (a multiply despite the name).
Quant: per block s = amax / 448, Wq = W / s. Edge blocks may be partial (e.g. 576 rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _blocked(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """View a zero-padded copy of a 2-D tensor as (rows/b0, b0, cols/b1, b1) blocks."""
    import torch

    rows, cols = x.shape
    pr, pc = -rows % block[0], -cols % block[1]
    if pr or pc:
        x = torch.nn.functional.pad(x, (0, pc, 0, pr))
    return x.reshape(x.shape[0] // block[0], block[0], x.shape[1] // block[1], block[1])


def quantize_blocks(
    weight: torch.Tensor, block: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a real-valued 2-D weight to (float8_e4m3fn weight, float32 scale_inv).

    >>> q, s = quantize_blocks(torch.randn(576, 300))  # doctest: +SKIP
    >>> s.shape                                        # doctest: +SKIP
    torch.Size([5, 3])
    """
    import torch

    w = weight.to(torch.float32)
    blocks = _blocked(w, block)
    amax = blocks.abs().amax(dim=(1, 3))
    # An all-zero block gets scale 1 so the stored scale stays positive and finite.
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    full = scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    full = full[: w.shape[0], : w.shape[1]]
    q = (w / full).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.contiguous()


def dequantize_blocks(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Exact block dequantization (partial edge blocks included) to `dtype` (default float32).

    Each element is float(q) * scale in float32, then rounded once to `dtype`.

    >>> dequantize_blocks(q, s, dtype=torch.bfloat16)  # doctest: +SKIP
    """
    import torch

    out = torch.empty(q.shape, dtype=dtype or torch.float32)
    for rows, chunk in iter_dequantized(q, scale_inv, block, out.dtype):
        out[rows].copy_(chunk)
    return out


def dequantize_reference(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The definition written plainly (a full-size scale map); the fast path is tested on it."""
    import torch

    rows, cols = q.shape
    full = scale_inv.to(torch.float32).repeat_interleave(block[0], 0)
    full = full.repeat_interleave(block[1], 1)[:rows, :cols]
    out = q.to(torch.float32) * full
    return out if dtype is None else out.to(dtype)


# float8_e4m3fn bits moved into a float32's exponent/mantissa fields read as x * 2^-120 exactly
# (normals land on normal floats, the 7 subnormals on float32 subnormals), so the conversion is
# integer shifts and the 2^120 folds into the scale. torch's own fp8->fp32 cast is ~4x slower.
_EXP_SHIFT = 2.0**120
# A code sign-extended from int8 and shifted left 20 has its 7 low bits in float32 bits 20..26
# and copies of its sign in bits 27..31: keep bit 31 (the sign) and bits 20..26 (as int32).
_F32_FIELDS = 0x87F00000 - (1 << 32)
_NAN_CODES = (0x7F, 0xFF)  # e4m3fn's only NaNs: exponent and mantissa all ones


def iter_dequantized(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Dequantize one block-row at a time: (row slice, chunk); memory stays at one block-row.

    A chunk is reused by the next step: copy or write it before advancing.
    """
    import torch

    dtype = dtype or torch.float32
    scale = scale_inv.to(torch.float32)
    folded = scale * _EXP_SHIFT
    if not bool(torch.isfinite(folded).all()):  # huge or hostile scales: the plain definition
        out = dequantize_reference(q, scale, block, dtype)
        yield slice(0, q.shape[0]), out
        return
    br = block[0]
    bits = torch.empty((min(br, q.shape[0]), q.shape[1]), dtype=torch.int32)
    chunk = torch.empty(bits.shape, dtype=dtype)
    raw = q.view(torch.uint8)
    nans = _has_nan_codes(raw)  # one scan of the whole tensor; per-row masks only if needed
    for r0 in range(0, q.shape[0], br):
        n = min(br, q.shape[0] - r0)
        rows = raw[r0 : r0 + n]
        values = _fp8_bits_to_scaled(rows, bits[:n], folded[r0 // br], block[1])
        if nans:
            _set_nans(values, rows)
        chunk[:n].copy_(values)
        yield slice(r0, r0 + n), chunk[:n]


def _has_nan_codes(raw: torch.Tensor) -> bool:
    """Whether any code is 0x7F or 0xFF: the int8 maximum or the uint8 maximum (two max
    passes over one byte per element, no temporaries)."""
    if raw.numel() == 0:
        return False
    codes = raw.numpy()
    return bool(codes.max() == 0xFF or codes.view(np.int8).max() == 0x7F)


def _set_nans(values: torch.Tensor, raw: torch.Tensor) -> None:
    import torch

    codes = raw.numpy()
    mask = (codes == _NAN_CODES[0]) | (codes == _NAN_CODES[1])
    if mask.any():
        values[torch.from_numpy(mask)] = float("nan")


def _fp8_bits_to_scaled(
    raw: torch.Tensor, bits: torch.Tensor, scales: torch.Tensor, bc: int
) -> torch.Tensor:
    """One block-row: float32 values of `raw` (uint8 fp8 codes) times their blocks' scales
    (NaN codes come out finite: `_set_nans` fixes them)."""
    import torch

    bits.copy_(raw.view(torch.int8))  # sign-extends
    bits.bitwise_left_shift_(20).bitwise_and_(_F32_FIELDS)
    values = bits.view(torch.float32)
    n, cols = values.shape
    nb = cols // bc
    if nb:
        values[:, : nb * bc].view(n, nb, bc).mul_(scales[:nb].view(1, nb, 1))
    if nb * bc < cols:
        values[:, nb * bc :].mul_(scales[nb])
    return values
