"""modalign: multimodal embedding alignment.

Train one embedding space shared by several modalities and measure how well it is aligned.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
