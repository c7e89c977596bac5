"""Site configurations: one module per kind of site."""

from .local import Local

__all__ = ["Local"]
