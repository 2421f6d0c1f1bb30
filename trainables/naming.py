"""Moved to `dsl.naming` (Ray-free); this name stays for importers not yet updated (sweeps/report.py)."""
from dsl.naming import describe, run_name

__all__ = ["describe", "run_name"]
