"""Acoustic front ends on torch, shared by extraction, training and export."""
