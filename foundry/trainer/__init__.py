"""The one training core (see core.py), its run directory (rundir.py) and its objectives (objectives.py).

Importing this package is torch-free (the run directory and the metrics log are); `core` and `objectives`
import torch and are imported by name.
"""
from foundry.trainer.rundir import RESUMABLE_CHANGES, MetricsLog, RunDir, config_diff, read_metrics, truncate_metrics

__all__ = ["RESUMABLE_CHANGES", "MetricsLog", "RunDir", "config_diff", "read_metrics", "truncate_metrics"]
