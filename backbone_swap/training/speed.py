"""How fast the device at hand multiplies matrices in the recipe's precision, measured in a fraction of a second.

A CPU without native bfloat16 matrix units runs bf16 products tens to hundreds of times slower than float32
(0.4 against 110 GFLOP/s was seen on a server CPU): a recipe written for GPUs (bf16) then trains for days on
such a CPU with no word said. Measuring is the only reliable test, as the instruction sets torch uses differ by
build and CPU.
"""

from __future__ import annotations

import time

# bf16 slower than a quarter of float32's speed is worth a word: fp32 then trains faster despite twice the bytes
SLOW_FACTOR = 4.0


def matmul_rate(precision: str, device: str = "cpu", *, seconds: float = 0.1) -> float:
    """Floating-point operations per second of square matrix products in ``precision`` on ``device``."""
    import torch

    from backbone_swap.training.model import precision_dtype

    size = 256 if device == "cpu" else 4096  # a GPU needs large products to be busy
    dtype = precision_dtype(precision)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # the first product pays for kernel selection
    if device != "cpu":
        torch.cuda.synchronize()  # not timed: it may still run when the clock starts
    count, started = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - started < seconds:
        a @ b
        count += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size ** 3 * count / (time.perf_counter() - started)


def slow_precision_warning(precision: str, rate: float, fp32_rate: float, device: str = "cpu") -> str | None:
    """The warning for a device that multiplies in ``precision`` far slower than in float32, or None."""
    if precision == "fp32" or rate * SLOW_FACTOR >= fp32_rate:
        return None
    from backbone_swap.training.model import precision_dtype
    from backbone_swap.units import fmt_flop

    name = str(precision_dtype(precision)).removeprefix("torch.")
    return (f"warning: this {device.upper()} multiplies {name} matrices at {fmt_flop(rate)}/s against "
            f"{fmt_flop(fp32_rate)}/s in float32, so the recipe's {precision} would train about "
            f"{fp32_rate / rate:.0f} times slower here; pass --set precision=fp32 to train in float32")


def check_precision(precision: str, device: str) -> tuple[float, str | None]:
    """The measured rate in ``precision`` on ``device`` and, on a CPU slow at it, the warning to show."""
    rate = matmul_rate(precision, device)
    if precision == "fp32" or device != "cpu":
        return rate, None
    return rate, slow_precision_warning(precision, rate, matmul_rate("fp32", device), device)
