"""Compare two results files cell by cell, ignoring what legitimately differs between runs and machines (timings,
memory, host, worker, start method, attempts: :func:`crossode.sweep._dask.comparable`): prints the cells whose
records differ and exits 1 if any do.

    python comparisons/dask_throughput/same_records.py local.jsonl dask.jsonl
"""

import json
import sys

from crossode.sweep._dask import comparable


def load(path: str) -> dict:
    out = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = comparable(json.loads(line))
            out[rec["tags"]["cell"]] = rec
    return out


def main(argv=None) -> int:
    a_path, b_path = (sys.argv[1:] if argv is None else argv)[:2]
    a, b = load(a_path), load(b_path)
    differ = 0
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        if ra == rb:
            continue
        differ += 1
        label = (ra or rb)["tags"].get("label", key)
        if ra is None or rb is None:
            print(f"{label}: only in {a_path if rb is None else b_path}")
            continue
        fields = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
        print(f"{label}: differs in {', '.join(fields)}")
    print(f"{len(a)} and {len(b)} records; {differ} cells differ beyond timings, memory and hosts")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
