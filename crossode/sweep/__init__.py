"""Sweeps: many cells from one TOML config, each in a fresh process, every record saved the moment it exists.

- :func:`load_config` reads a sweep TOML (schema in :mod:`crossode.sweep._config`) into a :class:`SweepConfig`
  whose ``cells`` are the measurements to make;
- :func:`run_sweep` runs them through an :class:`Executor` (:class:`LocalExecutor`: a fresh process per cell,
  forked from a pre-imported template or spawned, threads pinned, time limit; :class:`DaskExecutor`: the same on
  the workers of a Dask cluster) and appends each :class:`~crossode.Record` to a JSONL file (:class:`ResultStore`:
  flush + fsync per record, ``--resume``, one writer at a time);
- :func:`load_records` reads results into a pandas DataFrame; :func:`write_report` writes tables, figures and a
  one-page Markdown/HTML report.

Command line: ``crossode compare --config sweep.toml [--resume] [--jobs N] [--timeout S] [--out FILE]
[--executor dask (--scheduler ADDRESS | --workers N)]`` and
``crossode report results.jsonl [--out DIR]``. Importing this package imports neither pandas nor matplotlib.
"""

from ._config import Cell as Cell, SweepConfig as SweepConfig, config_from_dict as config_from_dict
from ._config import load_config as load_config
from ._dask import ClusterError as ClusterError, DaskExecutor as DaskExecutor
from ._executor import Executor as Executor, InlineExecutor as InlineExecutor, LocalExecutor as LocalExecutor
from ._store import ResultStore as ResultStore, StoreLockedError as StoreLockedError, read_records as read_records
from ._store import SkippedLineWarning as SkippedLineWarning, StoreWriteError as StoreWriteError
from ._sweep import print_summary as print_summary, run_sweep as run_sweep


def load_records(path):
    """The records of a JSONL results file as a pandas DataFrame (one row per record; see
    :func:`crossode.sweep._report.records_frame` for the columns)."""
    from ._report import load_records as _load

    return _load(path)


def write_report(path, out_dir=None, **kwargs):
    """Write tables, figures and ``report.md`` / ``report.html`` for a results file; returns the report path."""
    from ._report import write_report as _write

    return _write(path, out_dir, **kwargs)


__all__ = ["Cell", "SweepConfig", "load_config", "config_from_dict", "Executor", "LocalExecutor", "InlineExecutor",
           "DaskExecutor", "ClusterError",
           "ResultStore", "StoreLockedError", "StoreWriteError", "SkippedLineWarning", "read_records", "run_sweep",
           "print_summary", "load_records",
           "write_report"]
