"""Variational inference: factors, the local step and the loop."""
