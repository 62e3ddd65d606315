"""The results store: one line per record, fsync per record, torn lines repaired, one writer at a time."""

import json
import os
import subprocess
import sys

import pytest

from crossode import Record
from crossode.sweep import ResultStore, StoreLockedError, read_records
from crossode.sweep._store import SkippedLineWarning


def rec(key, status="ok"):
    return Record(problem="p", backend="reference", solver="dopri5", sensitivity="direct", status=status,
                  tags={"cell": key})


def test_append_flushes_and_fsyncs_each_record(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "r.jsonl"
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    with ResultStore(path) as store:
        store.append(rec("a"))
        n = len(synced)
        assert n >= 1
        assert [r["tags"]["cell"] for r in read_records(path)] == ["a"]  # on disk before the next record
        store.append(rec("b", "crashed"))
        assert len(synced) == n + 1
        assert store.finished() == {"a", "b"}
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["problem"] == "p" for x in lines)


def test_torn_last_line_is_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps(rec("a").to_dict())
    path.write_text(good + "\n" + good[:40])  # killed mid-write
    with pytest.warns(SkippedLineWarning, match=r"r.jsonl:2: an incomplete last record"):
        assert [r["tags"]["cell"] for r in read_records(path)] == ["a"]  # readers skip the torn line, and say so
    with ResultStore(path) as store:
        assert store.finished() == {"a"}
        store.append(rec("b"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["tags"]["cell"] for x in lines] == ["a", "b"]


def test_torn_only_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"problem": "p", "ta')
    with ResultStore(path) as store:
        store.append(rec("a"))
    assert [json.loads(x)["tags"]["cell"] for x in path.read_text().splitlines()] == ["a"]


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path):
        with pytest.raises(StoreLockedError, match="in use by another sweep"):
            ResultStore(path).open()
        # and from another process
        code = ("import sys\nfrom crossode.sweep import ResultStore, StoreLockedError\n"
                f"try:\n    ResultStore({str(path)!r}).open()\nexcept StoreLockedError as e:\n"
                "    print(e); sys.exit(7)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 7 and str(os.getpid()) in out.stdout
    with ResultStore(path):  # released on exit
        pass
