"""Training: a thin Lightning module around the photon loss, and ``train`` to run it.

- :mod:`~photongap.training.module`: the Lightning module (split on the device, network,
  photon loss) and the learning-rate schedule.
- :mod:`~photongap.training.callbacks`: the run folder's ``last.ckpt`` and ``metrics.csv``,
  and the progress bar.
- :mod:`~photongap.training.run`: :func:`train`, which owns the run folder.
"""

from photongap.training.callbacks import RunFiles, TrainingBar, read_metrics
from photongap.training.module import GapLightningModule, RunProgress, learning_rate_factor
from photongap.training.run import TrainResult, data_statistics, train

__all__ = [
    "GapLightningModule", "RunFiles", "RunProgress", "TrainResult", "TrainingBar",
    "data_statistics", "learning_rate_factor", "read_metrics", "train",
]
