"""The results store: one line per record, fsync per record, torn lines repaired, one writer at a time."""

import json
import os
import subprocess
import sys

import pytest

from crossode import InvalidInputError, Record
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


@pytest.mark.parametrize("where, match", [("dir", "is a directory"), ("dev", "not a regular file"),
                                          ("proc", "cannot be written"), ("under_file", "cannot be written")])
def test_unusable_paths_are_refused_on_open(tmp_path, where, match):
    """A sweep `output` under /proc, a directory or a device gave tracebacks (issue 15)."""
    (tmp_path / "f").write_text("")
    path = {"dir": tmp_path, "dev": "/dev/full", "proc": "/proc/crossode/r.jsonl",
            "under_file": tmp_path / "f" / "r.jsonl"}[where]
    with pytest.raises(InvalidInputError, match=match):
        ResultStore(path).open()


def test_failed_write_leaves_no_torn_line(tmp_path):
    """A write refused by the kernel (here RLIMIT_FSIZE, which fails a write exactly as a full disk does, with
    EFBIG instead of ENOSPC) raises StoreWriteError and leaves the file as it was."""
    path = tmp_path / "r.jsonl"
    code = ("import resource, sys\nfrom crossode import Record\nfrom crossode.sweep._store import ResultStore, "
            "StoreWriteError\n"
            "r = lambda k: Record(problem='p', backend='b', solver='s', sensitivity='x', tags={'cell': k})\n"
            f"with ResultStore({str(path)!r}) as st:\n    st.append(r('a'))\n"
            "    size = len(open(st.path).read())\n"
            "    resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, resource.RLIM_INFINITY))\n"
            "    try:\n        st.append(r('b'))\n    except StoreWriteError as e:\n        print(e); sys.exit(5)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 5, out.stderr
    assert "could not write a record" in out.stdout and "File too large" in out.stdout
    assert [json.loads(x)["tags"]["cell"] for x in path.read_text().splitlines()] == ["a"]
    assert path.read_text().endswith("\n")


def test_garbage_lines_are_skipped_with_their_line_number(tmp_path):
    """Garbage in the middle of a JSONL was skipped silently by report and resume (issue 15)."""
    path = tmp_path / "r.jsonl"
    good = json.dumps(rec("a").to_dict())
    path.write_bytes((good + "\n" + "not json\n" + "[1, 2]\n").encode() + b"\xff\xfe\n" + (good + "\n").encode())
    with pytest.warns(SkippedLineWarning) as caught:
        assert len(read_records(path)) == 2
    msgs = [str(w.message) for w in caught]
    assert any("r.jsonl:2: not a JSON record" in m for m in msgs)
    assert any(":3: a JSON list" in m for m in msgs) and any(":4: not UTF-8" in m for m in msgs)
    with pytest.warns(SkippedLineWarning, match="r.jsonl:2"):  # resume reads the file through the same reader
        with ResultStore(path) as store:
            assert store.finished() == {"a"}


def test_statuses_are_the_latest_per_cell(tmp_path):
    from crossode.sweep._store import latest_by_cell

    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append(rec("a", "crashed"))
        store.append(rec("b"))
        store.append(rec("a"))
        assert store.statuses() == {"a": "ok", "b": "ok"}
    assert [(r["tags"]["cell"], r["status"]) for r in latest_by_cell(read_records(path))] == [("a", "ok"), ("b", "ok")]
