"""Data: the built-in synthetic few-shot recommendation data (real loaders come later)."""

from jaxmeta.data import synthetic as synthetic

__all__ = ("synthetic",)
