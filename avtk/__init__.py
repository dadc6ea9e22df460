"""avtk: audio-visual speaker recognition toolkit."""

__version__ = "0.1.0"
