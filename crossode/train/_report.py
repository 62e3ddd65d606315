"""Reports of training results files: runs and iterations as DataFrames, figures, tables, one-page MD/HTML.

``crossode report results.jsonl`` dispatches here when the file holds training records (``kind`` =
``train_iteration``/``train_run``, :mod:`crossode.train._records`). Only each run's latest attempt is used.

Figures (``figures/``; each drawn only when the data has what it needs):

- ``loss.png``: training loss against iteration and against cumulative training time (log scale), one line per run;
  a run that failed ends in an ``x`` labelled with its status;
- ``time_per_iteration.png``: each step's time against iteration;
- ``nfe.png``: forward and backward function evaluations per step against iteration;
- ``memory.png``: peak memory of each run (bars, by what was measured: ``cpu_rss``, ``xla_temp``, ...);
- ``metrics.png``: the workload's evaluation metrics (the same backend-free evaluation for every run) against
  iteration;
- ``trajectories.png`` (spiral): each run's learned model extrapolated, in the phase plane, against the truth;
  ``densities.png`` (workloads with a density artifact): each run's learned density side by side.

Tables (``tables/``): ``runs`` (status, iterations, final loss and metrics, training time, time per iteration, time
to reach the target, compile time, NFE, peak memory) and ``iterations`` (every iteration record, CSV only).
"""

from __future__ import annotations

import math
import os

from .._errors import InvalidInputError
from ..sweep._store import read_records
from ._records import is_training_record, latest_attempts

__all__ = ["is_training_file", "load_training", "write_training_report", "time_to_target"]

BACKEND_LINES = {"torch": ("-", "o"), "jax": ("--", "s"), "julia": (":", "D")}


def is_training_file(paths) -> bool:
    """Whether the results file(s) hold training records (the first record decides per file)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    for p in paths:
        for r in read_records(p):
            return is_training_record(r)
    return False


def _step(r) -> str:
    if r.get("dt") is not None:
        return f"dt={r['dt']:g}"
    if r.get("rtol") is not None:
        return f"rtol={r['rtol']:g}"
    return "-"


def load_training(paths):
    """``(runs, iterations)``: pandas DataFrames of the latest attempt of every run in the file(s). Evaluation
    metrics become ``eval.<name>`` columns; ``method`` is ``solver+sensitivity``, ``series`` ``method step``."""
    import pandas as pd

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    records = []
    for p in paths:
        records += read_records(p)
    runs, iters = latest_attempts(records)
    seen = {r["tags"]["cell"] for r in runs}
    rows = []
    for r in runs:
        r = dict(r)
        tags = r.get("tags") or {}
        ev = r.pop("eval", None) or {}
        r.update({f"eval.{k}": v for k, v in ev.items()})
        r.update(cell=tags.get("cell"), git_commit=tags.get("git_commit"), step=_step(r),
                 method=f"{r['solver']}+{r['sensitivity']}", target=(tags.get("train") or {}).get("target"),
                 target_metric=(tags.get("train") or {}).get("target_metric", "loss"))
        r["series"] = f"{r['method']} {r['step']}"
        rows.append(r)
    for key, its in iters.items():  # killed runs with no run record yet: listed as "running/killed"
        if key in seen or not its:
            continue
        last = its[-1]
        rows.append({**{k: last.get(k) for k in ("run", "workload", "problem", "backend", "solver", "sensitivity",
                                                 "rtol", "atol", "dt", "dtype", "device")},
                     "kind": "train_run", "status": "incomplete", "message": "no run record: killed or still running",
                     "iterations": max((i.get("iteration") or 0) for i in its), "cell": key, "step": _step(last),
                     "method": f"{last['solver']}+{last['sensitivity']}", "tags": last.get("tags") or {},
                     "series": f"{last['solver']}+{last['sensitivity']} {_step(last)}"})
    runs_df = pd.DataFrame(rows)
    it_rows = []
    for key, its in iters.items():
        for i in its:
            i = dict(i)
            ev = i.pop("eval", None) or {}
            i.update({f"eval.{k}": v for k, v in ev.items()})
            i["cell"] = key
            i.pop("tags", None)
            it_rows.append(i)
    it_df = pd.DataFrame(it_rows)
    for df, cols in ((runs_df, ("loss", "wall_s", "time_per_iteration_s", "compile_s", "peak_memory_bytes",
                                "nfe_forward", "nfe_backward", "iterations")),
                     (it_df, ("loss", "grad_norm", "wall_s", "time_s", "nfe_forward", "nfe_backward",
                              "peak_memory_bytes", "iteration"))):
        if df.empty:
            continue
        for c in cols:
            if c not in df:
                df[c] = None
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return runs_df, it_df


def time_to_target(its, metric: str, target: float):
    """``(wall_s, iteration)`` of the first record of one run's iterations whose ``metric`` (``"loss"`` or an
    evaluation metric) is at or below ``target``; ``(None, None)`` if never."""
    col = "loss" if metric == "loss" else f"eval.{metric}"
    if col not in its:
        return None, None
    hit = its[(its[col].notna()) & (its[col] <= target)]
    if hit.empty:
        return None, None
    first = hit.sort_values("iteration").iloc[0]
    return float(first["wall_s"]), int(first["iteration"])


# ------------------------------------------------------------------------------------------------- styles


class _Styles:
    """Colour per series (method + step), line style and marker per backend."""

    def __init__(self, runs):
        import matplotlib

        series = list(dict.fromkeys(runs["series"]))
        cmap = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors
        self.color = {s: cmap[i % len(cmap)] for i, s in enumerate(series)}

    def __call__(self, row):
        ls, marker = BACKEND_LINES.get(row["backend"], ("-.", "^"))
        return {"color": self.color.get(row["series"], "0.3"), "linestyle": ls}

    @staticmethod
    def label(row) -> str:
        return f"{row['backend']} {row['series']}"


def _finish(fig, axes, path, top_note=None):
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    bottom = 0.04
    if labels:
        width = fig.get_figwidth()  # columns that fit: about 3.6 inches per label
        ncol = max(1, min(len(labels), 3, int(width // 3.6)))
        fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=ncol, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        rows = (len(labels) + ncol - 1) // ncol
        bottom = (0.15 + 0.2 * rows) / fig.get_figheight()
    if top_note:
        fig.suptitle(top_note, fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, bottom, 1, 0.97 if top_note else 1))
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _per_run(runs, its):
    for _, row in runs.iterrows():
        g = its[its["cell"] == row["cell"]].sort_values("iteration") if not its.empty else its
        yield row, g


def _mark_end(ax, row, g, x_col, y_col, style):
    """An ``x`` at a failed run's last point, labelled with its status."""
    if row["status"] == "ok":
        return
    ok = g[g[y_col].notna()] if y_col in g else g.iloc[0:0]
    if ok.empty:
        return
    x, y = ok[x_col].iloc[-1], ok[y_col].iloc[-1]
    ax.plot([x], [y], marker="x", markersize=9, mew=2, color=style["color"], linestyle="none")
    ax.annotate(row["status"], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, color=style["color"])


def fig_loss(runs, its, path, styles):
    """Training loss vs iteration and vs cumulative training time."""
    from ..sweep._report import _plt

    plt = _plt()
    data = its[its["loss"].notna()] if not its.empty else its
    if data.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for row, g in _per_run(runs, data):
        if g.empty:
            continue
        st = styles(row)
        for ax, x in zip(axes, ("iteration", "wall_s")):
            ax.plot(g[x], g["loss"], label=styles.label(row), linewidth=1.3, **st)
            _mark_end(ax, row, g, x, "loss", st)
    pos = data["loss"][data["loss"] > 0]
    log = not pos.empty and pos.max() / pos.min() > 20 and (data["loss"] > 0).all()  # a narrow range reads linear
    for ax, xl in zip(axes, ("iteration", "cumulative training time [s] (evaluation excluded)")):
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("training loss")
    axes[1].set_xscale("log")
    axes[0].set_title("loss vs iteration")
    axes[1].set_title("loss vs training time")
    return _finish(fig, axes, path)


def fig_lines(runs, its, path, styles, y_cols, titles, ylabels, log=True):
    """One panel per column of ``y_cols`` against iteration."""
    from ..sweep._report import _plt

    plt = _plt()
    cols = [c for c in y_cols if c in its and its[c].notna().any()]
    if its.empty or not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(max(11.0, 5.5 * len(cols)), 4.2), squeeze=False)
    axes = axes.ravel()
    for ax, col in zip(axes, cols):
        for row, g in _per_run(runs, its):
            g = g[g[col].notna()]
            if g.empty:
                continue
            st = styles(row)
            ax.plot(g["iteration"], g[col], label=styles.label(row), linewidth=1.2,
                    marker=BACKEND_LINES.get(row["backend"], ("", "^"))[1] if len(g) <= 40 else None,
                    markersize=3, **st)
            _mark_end(ax, row, g, "iteration", col, st)
        i = y_cols.index(col)
        ax.set_title(titles[i])
        ax.set_ylabel(ylabels[i])
        ax.set_xlabel("iteration")
        if log:
            ax.set_yscale("log")
    return _finish(fig, axes, path)


def fig_memory(runs, path, styles):
    """Peak memory of each run, by what was measured."""
    from ..sweep._report import _plt

    plt = _plt()
    d = runs[runs["peak_memory_bytes"].notna() & (runs["peak_memory_bytes"] > 0)]
    if d.empty:
        return None
    kinds = list(dict.fromkeys(d["memory_kind"].fillna("?")))
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(6.5, 5.0 * len(kinds)), 0.9 + 0.42 * d.groupby(
        "memory_kind").size().max() + 1.2), squeeze=False)
    axes = axes.ravel()
    what = {"cpu_rss": "peak RSS above the start of training (process)", "xla_temp": "XLA temporary memory of "
            "the step program", "cuda_allocator": "CUDA allocator peak", "jax_gpu_peak": "JAX GPU peak"}
    for ax, kind in zip(axes, kinds):
        g = d[d["memory_kind"].fillna("?") == kind]
        labels = [styles.label(r) for _, r in g.iterrows()]
        values = g["peak_memory_bytes"] / 1e6
        colors = [styles(r)["color"] for _, r in g.iterrows()]
        ax.barh(range(len(g)), values, color=colors)
        ax.set_yticks(range(len(g)), labels, fontsize=8)
        ax.invert_yaxis()
        for y, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xlabel("MB")
        ax.set_title(what.get(kind, kind), fontsize=9)
        ax.set_xlim(0, values.max() * 1.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_trajectories(runs, path, styles):
    """Spiral workloads: every run's learned model extrapolated, in the phase plane, against the truth."""
    from ..sweep._report import _plt

    rows = [r for _, r in runs.iterrows() if isinstance(r.get("artifacts"), dict)
            and isinstance(r["artifacts"].get("trajectory"), dict)]
    if not rows:
        return None
    import numpy as np

    plt = _plt()
    n = len(rows)
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.1 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, r in zip(axes.ravel(), rows):
        tr = r["artifacts"]["trajectory"]
        t, true = np.asarray(tr["t"]), np.asarray(tr["true"])
        ax.plot(true[:, 0], true[:, 1], color="0.6", linewidth=2.5, label="true spiral")
        train = t <= tr.get("t_train", 0) + 1e-12
        if tr.get("y") is not None:
            y = np.asarray(tr["y"])
            st = styles(r)
            ax.plot(y[train, 0], y[train, 1], color=st["color"], linewidth=1.4, label="learned (training span)")
            ax.plot(y[~train, 0], y[~train, 1], color=st["color"], linewidth=1.0, linestyle=":",
                    label="learned (extrapolation)")
        else:
            ax.text(0.5, 0.5, "the learned model's\nsolve failed", transform=ax.transAxes, ha="center")
        ev = r.get("eval.extrapolation_error")
        ax.set_title(f"{styles.label(r)}\n" + (f"extrap. error {ev:.3g}" if ev == ev and ev is not None
                                                 else r["status"]), fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    h, lab = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_densities(runs, path, styles):
    """Workloads with a ``density`` artifact (2-D flows): each run's learned density and the data's, side by side."""
    from ..sweep._report import _plt

    rows = [r for _, r in runs.iterrows() if isinstance(r.get("artifacts"), dict)
            and isinstance(r["artifacts"].get("density"), dict)]
    if not rows:
        return None
    import numpy as np

    plt = _plt()
    first = rows[0]["artifacts"]["density"]
    panels = ([("data", first.get("data"), first)] if first.get("data") is not None else []) + [
        (styles.label(r) + ("" if r["status"] == "ok" else f" ({r['status']})"), r["artifacts"]["density"].get("p"),
         r["artifacts"]["density"]) for r in rows]
    n = len(panels)
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.1 * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, (title, img, meta) in zip(axes.ravel(), panels):
        ext = meta.get("extent", [-4, 4, -4, 4])
        if img is None:
            ax.text(0.5, 0.5, "no density", transform=ax.transAxes, ha="center")
        else:
            ax.imshow(np.asarray(img), origin="lower", extent=ext, cmap="magma", aspect="equal")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- tables


def _f(v, spec=".3g"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def runs_table(runs, its):
    """One row per run: status, iterations, final loss and metrics, times (time to target), NFE, peak memory."""
    import pandas as pd

    metrics = [c for c in runs.columns if c.startswith("eval.")]
    out = []
    for row, g in _per_run(runs, its):
        target, metric = row.get("target"), row.get("target_metric") or "loss"
        has_target = target is not None and target == target
        reach = time_to_target(g, metric, float(target)) if has_target and not g.empty else None
        t = row.get("time_per_iteration_s")
        mb = row.get("peak_memory_bytes")
        d = {"run": row["run"], "backend": row["backend"], "method": row["method"], "step": row["step"],
             "status": row["status"] if row["status"] == "ok" else f"**{row['status']}**",
             "iterations": _f(row.get("iterations"), ".0f"), "final loss": _f(row.get("loss"), ".4g")}
        for m in metrics:
            d[m[5:]] = _f(row.get(m))
        d.update({"train s": _f(row.get("wall_s"), ".3g"),
                  "ms/iter": _f(None if t is None or t != t else 1e3 * t, ".3g"),
                  f"s to {metric} <= {_f(target, 'g')}" if has_target else "s to target":
                      ("not reached" if reach == (None, None) else f"{reach[0]:.3g} (it {reach[1]})")
                      if reach is not None else "–",
                  "compile s": _f(row.get("compile_s"), ".3g"),
                  "NFE f/b": f"{_f(row.get('nfe_forward'), '.0f')}/{_f(row.get('nfe_backward'), '.0f')}",
                  "peak MB": _f(None if mb is None or mb != mb else mb / 1e6, ".3g"),
                  "memory": row.get("memory_kind") if isinstance(row.get("memory_kind"), str) else "–",
                  "note": "" if row["status"] == "ok" else str(row.get("message") or "")[:120]})
        out.append(d)
    return pd.DataFrame(out)


def write_training_report(paths, out_dir=None, title: str | None = None) -> str:
    """Write ``tables/``, ``figures/``, ``report.md`` and ``report.html`` for training results file(s); returns
    report.md (``out_dir`` defaults to ``<stem of the first file>_report``)."""
    from ..sweep._report import _footer, _write_docs, md_table

    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    out_dir = os.fspath(out_dir or os.path.splitext(paths[0])[0] + "_report")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InvalidInputError(f"report directory {out_dir!r} exists and is not a directory.")
    tables_dir, fig_dir = os.path.join(out_dir, "tables"), os.path.join(out_dir, "figures")
    try:
        os.makedirs(tables_dir, exist_ok=True)
        os.makedirs(fig_dir, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"report directory {out_dir!r} cannot be created ({e.strerror or e}).") from None
    runs, its = load_training(paths)
    studies = sorted({(t or {}).get("sweep") for t in runs.get("tags", []) if (t or {}).get("sweep")})
    title = title or ("crossode training report: " + (", ".join(studies) if studies else os.path.basename(paths[0])))
    blocks: list[tuple] = [("h1", title)]
    if runs.empty:
        blocks.append(("p", "No training runs."))
        return _write_docs(out_dir, blocks)
    settings = next(((t or {}).get("train") for t in runs["tags"] if (t or {}).get("train")), {}) or {}
    opt = settings.get("optimizer") or {}
    counts = runs["status"].value_counts()
    blocks.append(("p", f"{len(runs)} runs of workload {', '.join(sorted(set(runs['problem'].dropna())))} from "
                        f"{', '.join(os.path.basename(p) for p in paths)}: "
                        + ", ".join(f"{k} {v}" for k, v in counts.items())
                        + f". Every run: Adam (lr {opt.get('lr')}, betas ({opt.get('b1')}, {opt.get('b2')}), eps "
                          f"{opt.get('eps')}), {settings.get('iterations')} iterations, "
                        + (f"mini-batches of {settings['batch_size']}" if settings.get("batch_size") else
                           "the whole data every step")
                        + ", the same initial parameters and mini-batches. Training time counts optimizer steps only "
                          "(evaluation excluded; JAX compilation reported separately). Evaluation metrics are computed "
                          "the same way for every run, backend-free (SciPy at rtol 1e-10 on the model's exact flow)."))
    table = runs_table(runs, its)
    table.to_csv(os.path.join(tables_dir, "runs.csv"), index=False)
    with open(os.path.join(tables_dir, "runs.md"), "w") as fh:
        fh.write(md_table(table))
    if not its.empty:
        its.to_csv(os.path.join(tables_dir, "iterations.csv"), index=False)
    blocks += [("h2", "Runs"), ("table", table.drop(columns=["note", "run"]), 60, "tables/runs.csv")]
    fails = table[table["note"] != ""]
    if not fails.empty:
        blocks += [("h2", f"Failed runs ({len(fails)})"), ("table", fails[["run", "status", "note"]], 60,
                                                           "tables/runs.csv")]
    styles = _Styles(runs)
    metrics = [c for c in its.columns if c.startswith("eval.")] if not its.empty else []
    figures = [
        ("Loss", fig_loss(runs, its, os.path.join(fig_dir, "loss.png"), styles),
         "Training loss (the mini-batch loss each step computed, at the parameters before the step) against "
         "iteration and against cumulative training time. An x marks where a failed run stopped."),
        ("Time per iteration", fig_lines(runs, its, os.path.join(fig_dir, "time_per_iteration.png"), styles,
                                         ["time_s"], ["time per optimizer step"], ["s"]),
         "Wall time of each step (forward solve, gradient, optimizer update)."),
        ("Function evaluations per iteration", fig_lines(
            runs, its, os.path.join(fig_dir, "nfe.png"), styles, ["nfe_forward", "nfe_backward"],
            ["forward NFE per step", "backward NFE per step"], ["evaluations", "evaluations (and VJPs)"]),
         "Vector-field evaluations of each step's forward solve and backward pass (JAX Backsolve's backward "
         "evaluations are not counted)."),
        ("Peak memory", fig_memory(runs, os.path.join(fig_dir, "memory.png"), styles),
         "Peak memory of each run; only bars of one kind compare (a process's RSS is not an XLA program's "
         "temporary size)."),
        ("Evaluation metrics", fig_lines(runs, its, os.path.join(fig_dir, "metrics.png"), styles, metrics,
                                         [m[5:].replace("_", " ") for m in metrics], [m[5:] for m in metrics]),
         "The workload's metrics, every eval_every iterations, evaluated the same way for every run."),
        ("Learned models", fig_trajectories(runs, os.path.join(fig_dir, "trajectories.png"), styles),
         "Each run's final model, solved exactly (SciPy, rtol 1e-10) beyond the training span, against the truth."),
        ("Learned densities", fig_densities(runs, os.path.join(fig_dir, "densities.png"), styles),
         "Each run's learned density on a grid, beside the data."),
    ]
    for heading, fig, caption in figures:
        if fig is not None:
            blocks += [("h2", heading), ("img", os.path.relpath(fig, out_dir), heading), ("p", caption)]
    footer_df = runs.copy()
    for col in ("versions", "threads"):
        if col not in footer_df:
            footer_df[col] = None
    # runs killed mid-way (no run record) have no versions and tags of their own
    footer_df["versions"] = footer_df["versions"].map(lambda v: v if isinstance(v, dict) else {})
    footer_df["tags"] = footer_df["tags"].map(lambda v: v if isinstance(v, dict) else {})
    blocks += [("h2", "Reproducibility"), ("kv", _footer(footer_df))]
    return _write_docs(out_dir, blocks)
