"""modalign: multimodal embedding alignment.

Train one embedding space shared by several modalities, measure how well it is aligned, and
search across modalities in it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
