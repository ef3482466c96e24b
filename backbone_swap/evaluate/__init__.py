"""Turning a model's raw outputs into scores, comparably across models."""
