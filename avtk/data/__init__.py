"""Kaldi data directories: text tables, validation, trials."""
