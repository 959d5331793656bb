"""Experiments over runs: sweeps (plan, status, executor) and comparing finished runs."""
