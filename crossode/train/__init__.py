"""Training runs: one workload, many gradient methods, each run a real optimisation loop measured per iteration.

- :func:`load_train_config` reads a training TOML (schema in :mod:`crossode.train._config`): one workload
  (:mod:`crossode.train._workloads`: Onken & Ruthotto's spiral, any zoo problem or problem file with data), the
  optimizer settings and mini-batches shared by every run, and the runs (backend x solver x sensitivity x step control
  x device x dtype);
- :func:`train` runs them through the sweep engine (a fresh worker process per run, time limit, pinned threads,
  local or Dask executor), each run streaming one ``train_iteration`` record per iteration into the fsynced JSONL
  results file as it trains and a ``train_run`` record when it ends (schema: :mod:`crossode.train._records`);
- :func:`make_trainer` is the protocol to each backend's optimizer (``torch.optim.Adam``, ``optax.adam``): a public
  ``make_trainer`` in the backend's package (:mod:`crossode._training`);
- :func:`load_training` reads results into pandas DataFrames; ``crossode report`` on a training results file draws
  the training figures (:mod:`crossode.train._report`).

Command line: ``crossode train CONFIG.toml [--out F.jsonl] [--iterations N] [--resume] [--jobs N] [--timeout S]
[--executor dask (--scheduler ADDRESS | --workers N)]``. Importing this package imports no framework, pandas or
matplotlib.
"""

from ._config import TrainConfig as TrainConfig, load_train_config as load_train_config
from ._config import train_config_from_dict as train_config_from_dict
from .._training import Adam as Adam, StepOutput as StepOutput, Trainer as Trainer, make_trainer as make_trainer
from ._run import train as train
from ._workloads import Workload as Workload, build_workload as build_workload


def load_training(path):
    """``(runs, iterations)`` DataFrames of a training results file (or list of files): one row per run (latest
    attempt) and one per iteration record, evaluation metrics as ``eval.<name>`` columns."""
    from ._report import load_training as _load

    return _load(path)


__all__ = ["TrainConfig", "load_train_config", "train_config_from_dict", "Adam", "StepOutput", "Trainer",
           "make_trainer", "train", "Workload", "build_workload", "load_training"]
