"""Moved to `dsl.trial_config` (Ray-free); this name stays for importers not yet updated (sweeps/report.py)."""
from dsl.trial_config import ALPHA_KEYS, trial_config

__all__ = ["ALPHA_KEYS", "trial_config"]
