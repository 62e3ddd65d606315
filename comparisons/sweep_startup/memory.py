"""Peak memory of forked vs spawned cells: the torch cells of ``sweep.toml``, each measured twice per start method
(interleaved), ``peak_memory_bytes`` compared cell by cell. Writes ``memory.json``.

    python comparisons/sweep_startup/memory.py
"""

import json
import pathlib
import statistics
import sys

from crossode.sweep import LocalExecutor, load_config

HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    cells = [c for c in load_config(HERE / "sweep.toml").cells if c.backend == "torch"]
    peaks: dict[str, dict[str, list[float]]] = {}
    for _ in range(2):
        for start in ("spawn", "auto"):
            for cell, rec in LocalExecutor(start=start).run(cells):
                assert rec.status == "ok", rec.message
                peaks.setdefault(cell.label, {}).setdefault(rec.tags["start_method"], []).append(
                    rec.peak_memory_bytes / 1e6)
    rel = {k: statistics.median(v["fork"]) / statistics.median(v["spawn"]) - 1 for k, v in peaks.items()}
    out = {"command": "python comparisons/sweep_startup/memory.py", "peak_mb": peaks,
           "fork_vs_spawn_relative": {k: round(v, 4) for k, v in rel.items()},
           "max_abs_relative": round(max(abs(v) for v in rel.values()), 4)}
    (HERE / "memory.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
