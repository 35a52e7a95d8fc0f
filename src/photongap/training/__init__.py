"""Training: a thin Lightning module around the photon loss, and ``train`` to run it.

- :mod:`~photongap.training.module`: the Lightning module (split on the device, network,
  photon loss) and the learning-rate schedule.
- :mod:`~photongap.training.callbacks`: the run folder's ``last.ckpt`` and ``metrics.csv``,
  the run's clock (carried across resumes) and the progress bar.
- :mod:`~photongap.training.run`: :func:`train`, which owns the run folder and its configuration.
"""

from photongap.training.callbacks import RunClock, RunFiles, TrainingBar, read_metrics
from photongap.training.module import GapLightningModule, RunProgress, learning_rate_factor
from photongap.training.run import RunConfig, TrainResult, data_statistics, run_config, train, trained_range

__all__ = [
    "GapLightningModule", "RunClock", "RunConfig", "RunFiles", "RunProgress", "TrainResult", "TrainingBar",
    "data_statistics", "learning_rate_factor", "read_metrics", "run_config", "train", "trained_range",
]
