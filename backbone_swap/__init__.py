"""backbone-swap: move a LLaVA-style VLM onto a newer LLM and measure, task by task, whether it paid off."""

__version__ = "0.1.0"

from backbone_swap.errors import BackboneSwapError

__all__ = ["BackboneSwapError", "__version__"]
