"""jobd: a background-job service for one host."""

__version__ = "0.1.0"
