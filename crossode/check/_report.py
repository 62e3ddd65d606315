"""Tables (rich), JSON and the figure of a :class:`~crossode.check.CheckReport`."""

from __future__ import annotations

import io
import json
import math
import os

from rich.console import Console
from rich.table import Table

from ._check import taylor_index

__all__ = ["render_text", "write_outputs", "plot_report"]


def _f(x, spec=".2e"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _step(r) -> str:
    return f"dt={r.dt:g}" if r.dt is not None else f"rtol={r.rtol:g}"


def _ms(r) -> str:
    return "-" if r.time_gradient_s is None else f"{1e3 * r.time_gradient_s:.1f}"


def _last_ok(records):
    ok = [r for r in records if r.status in ("ok", "inaccurate")]
    return ok[-1] if ok else None


def render_text(report, width: int = 160) -> str:
    """The report as plain text: a summary per problem, one row per (problem, setting), failures, notes."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, highlight=False, emoji=False)
    label = "order" if report.mode == "fixed" else "rtol exp."
    steps = ", ".join(f"{k}={v:g}" for s in report.steps for k, v in s.items() if k != "atol")
    summary = Table(title=f"crossode check: {report.label} ({report.framework}, {report.mode} steps: {steps}); "
                          "work ord. = slope of gradient error vs 1/NFE; b-i = built-in method; errors, NFE and ms at "
                          "the finest setting")
    cols = ["problem", "verdict", f"sol. {label}", f"grad {label} (pairwise)", "expected", "work ord.", "Taylor",
            "grad err", "NFE", "ms", "built-in", f"b-i {label}", "b-i err", "b-i NFE", "b-i ms"]
    for c in cols:
        summary.add_column(c, justify="left" if c in ("problem", "verdict", "built-in") else "right",
                           no_wrap=c in ("problem", "verdict"))
    for p in report.problems:
        last = _last_ok(p.cells)
        blast = _last_ok(p.builtin)
        pairwise = ", ".join(f"{x:.2f}" for x in p.gradient.pairwise)
        t = p.taylor
        tay = "-" if t is None or t.slope is None else f"{t.slope:.2f}"
        summary.add_row(
            p.problem, p.status.upper(), _f(p.solution.order, ".2f"),
            f"{_f(p.gradient.order, '.2f')} ({pairwise})" if pairwise else _f(p.gradient.order, ".2f"),
            _f(p.expected_order, ".2f"), _f(p.work_order, ".2f"), tay,
            _f(last.grad_error) if last else "-", _f(last.nfe_forward, "d") if last else "-",
            _ms(last) if last else "-", p.builtin_solver or "-",
            _f(p.builtin_gradient.order, ".2f") if p.builtin_gradient else "-",
            _f(blast.grad_error) if blast else "-", _f(blast.nfe_forward, "d") if blast else "-",
            _ms(blast) if blast else "-",
        )
    console.print(summary)
    cells = Table(title="per setting (errors: relative L2 against the independent reference)")
    for c in ("problem", "step", "status", "sol. err", "grad err", "dparams err", "dy0 err", "NFE f/b",
              "ms", "compile s", "b-i err", "b-i NFE", "b-i ms"):
        cells.add_column(c, justify="left" if c in ("problem", "step", "status") else "right",
                         no_wrap=c in ("problem", "step", "status"))
    for p in report.problems:
        builtin = {(_step(b)): b for b in p.builtin}
        for r in p.cells:
            b = builtin.get(_step(r))
            cells.add_row(
                p.problem, _step(r), r.status, _f(r.tags.get("solution_error")), _f(r.grad_error),
                _f(r.dparams_error), _f(r.dy0_error), f"{_f(r.nfe_forward, 'd')}/{_f(r.nfe_backward, 'd')}",
                _ms(r), _f(r.compile_s, ".2f"),
                (_f(b.grad_error) if b.status in ("ok", "inaccurate") else b.status) if b else "-",
                _f(b.nfe_forward, "d") if b else "-", _ms(b) if b else "-",
            )
    console.print(cells)
    for p in report.problems:
        if p.status != "pass":
            console.print(f"{p.status.upper()} {p.problem}: {p.reason}", soft_wrap=True)
    for p in report.problems:
        for n in p.notes:
            console.print(f"note {p.problem}: {n}", soft_wrap=True)
        for b in p.builtin:
            if b.status not in ("ok", "inaccurate"):
                console.print(f"note {p.problem}: built-in {b.solver} at {_step(b)}: {b.status}: {b.message}",
                              soft_wrap=True)
    for n in report.notes:
        console.print(f"note: {n}", soft_wrap=True)
    for name, why in report.skipped.items():
        console.print(f"skipped {name}: {why}", soft_wrap=True)
    counts = {k: sum(p.status == k for p in report.problems) for k in ("pass", "fail", "inconclusive")}
    tally = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    verdict = "PASS" if report.passed else "FAIL"
    console.print(f"{verdict}: {tally} (of {len(report.problems)} problems)", soft_wrap=True)
    return buf.getvalue()


def write_outputs(report, out_dir: str) -> dict[str, str]:
    """``check.json`` (the whole report), ``records.jsonl`` (candidate and built-in records, for
    ``crossode report``), ``check.png`` (the figure; ``None`` without matplotlib); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "check.json"), "records": os.path.join(out_dir, "records.jsonl"),
             "figure": os.path.join(out_dir, "check.png")}
    with open(paths["json"], "w") as fh:
        json.dump(report.to_dict(), fh, indent=1)
    with open(paths["records"], "w") as fh:
        for p in report.problems:
            for r in [*p.cells, *p.builtin]:
                fh.write(json.dumps(r.to_dict()) + "\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        paths["figure"] = None  # the tables and JSON do not need it
        return paths
    plot_report(report, paths["figure"])
    return paths


def plot_report(report, path: str) -> None:
    """One row per problem: errors vs step (with the declared order's slope), work-precision (gradient error vs
    NFE, candidate and built-in), and the Taylor test (E0, E1 vs h with slopes 1 and 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = report.problems
    fig, axes = plt.subplots(len(probs), 3, figsize=(14, 3.4 * len(probs) + 0.6), squeeze=False)
    xlabel = "dt" if report.mode == "fixed" else "rtol"
    for row, p in zip(axes, probs):
        ax = row[0]
        xs = p.gradient.steps
        for errs, style, color, lab in (
            (p.solution.errors, "o-", "C0", "solution"), (p.gradient.errors, "s-", "C1", "gradient"),
            (p.builtin_gradient.errors if p.builtin_gradient else None, "^--", "C2",
             f"gradient, built-in {p.builtin_solver}"),
        ):
            if errs is None:
                continue
            pts = [(x, e) for x, e in zip(xs, errs) if e is not None and e > 0]
            if pts:
                ax.loglog(*zip(*pts), style, color=color, label=lab,
                          **({"mfc": "none", "ms": 9} if "built-in" in lab else {}))
        floor = p.gradient.floor
        shown = [e for e in [*p.solution.errors, *p.gradient.errors] if e is not None and e > 0]
        if shown and floor > min(shown) / 100:  # only when it is near the data (else it squeezes the axis)
            ax.axhline(floor, color="0.6", lw=0.8, ls=":", label=f"reference resolution {floor:.0e}")
        expected = p.expected_order
        gpts = [(xs[i], p.gradient.errors[i]) for i in p.gradient.used]
        if expected is not None and gpts and report.mode == "fixed":
            x0, e0 = gpts[0][0], gpts[0][1] / 4  # a guide just below the gradient's line
            ax.loglog([xs[0], xs[-1]], [e0 * (xs[0] / x0) ** expected, e0 * (xs[-1] / x0) ** expected],
                      color="0.4", lw=0.8, ls="-.", label=f"slope {expected:.2g} (expected)")
        verdict = p.status.upper()
        ax.set_title(f"{p.problem}: {verdict}, gradient order {_f(p.gradient.order, '.2f')}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative error")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        if report.mode == "adaptive":
            ax.invert_xaxis()
        ax = row[1]
        for recs, style, lab, kw in ((p.cells, "s-", report.label, {"color": "C1"}),
                                     (p.builtin, "^--", f"built-in {p.builtin_solver}",
                                      {"mfc": "none", "ms": 9, "color": "C2"})):
            pts = [(r.nfe_forward, r.grad_error) for r in recs
                   if r.status in ("ok", "inaccurate") and r.nfe_forward and r.grad_error]
            if pts:
                ax.loglog(*zip(*pts), style, label=lab, **kw)
        ax.set_title("work-precision: gradient error vs forward NFE", fontsize=10)
        ax.set_xlabel("NFE (forward, counted through func)")
        ax.set_ylabel("gradient error")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax = row[2]
        t = p.taylor
        if t is not None:
            import numpy as np

            ok0 = np.isfinite(t.e0) & (t.e0 > 0)
            ok1 = np.isfinite(t.e1) & (t.e1 > 0)
            ax.loglog(t.h[ok0], t.e0[ok0], "o-", ms=3, label="E0 = |J(θ+hv) − J(θ)|")
            ax.loglog(t.h[ok1], t.e1[ok1], "s-", ms=3, label="E1 = |J(θ+hv) − J(θ) − h v·g|")
            if t.used:
                ax.loglog(t.h[t.used], t.e1[t.used], "s", ms=7, mfc="none", color="k", label="fitted")
                i = t.used[0]
                e = t.e1[i] / 4  # guides just below E1
                ax.loglog(t.h, e * (t.h / t.h[i]) ** 2, color="0.4", lw=0.8, ls="-.", label="slope 2 (consistent)")
                ax.loglog(t.h, e * (t.h / t.h[i]), color="0.4", lw=0.8, ls=":", label="slope 1")
            top = np.nanmax(t.e0[ok0]) if ok0.any() else 1.0
            bottom = np.nanmin(t.floor[np.isfinite(t.floor)]) if np.isfinite(t.floor).any() else 1e-16
            ax.set_ylim(max(bottom / 10, 1e-300), top * 10)
            ax.set_title(f"Taylor test at {xlabel}={xs[taylor_index(report.steps)]:g}: slope "
                         f"{_f(t.slope, '.2f')} ({t.status})",
                         fontsize=10)
            ax.set_xlabel("h")
            ax.set_ylabel("|error|")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        else:
            at = xs[taylor_index(report.steps)]
            ax.text(0.5, 0.5, f"Taylor test not run\n(the {xlabel}={at:g} setting failed)", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
    fig.suptitle(f"crossode check: {report.label} ({report.framework}): {'PASS' if report.passed else 'FAIL'}",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
