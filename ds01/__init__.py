"""ds01: a multi-user GPU server manager for shared Docker hosts."""

__version__ = "0.1.0"
