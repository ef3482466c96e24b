"""Benchmarks read from their official release files, one registry entry each (``base.Benchmark``)."""

from __future__ import annotations

from backbone_swap.evaluate.benchmarks.base import Benchmark
from backbone_swap.evaluate.benchmarks.gqa import GQA
from backbone_swap.evaluate.benchmarks.mmbench import MMBENCH
from backbone_swap.evaluate.benchmarks.mme import MME
from backbone_swap.evaluate.benchmarks.pope import POPE
from backbone_swap.evaluate.benchmarks.scienceqa import SCIENCEQA
from backbone_swap.evaluate.benchmarks.seedbench import SEEDBENCH
from backbone_swap.evaluate.benchmarks.textvqa import TEXTVQA
from backbone_swap.evaluate.benchmarks.vqav2 import VQAV2

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark for benchmark in (VQAV2, TEXTVQA, GQA, SCIENCEQA, POPE, MME, MMBENCH, SEEDBENCH)
}
