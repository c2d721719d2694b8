"""Completion logs and tile states (kgml_grid.records) and the window arithmetic
(kgml_grid.schedule): pure or file-level, no cluster."""

from __future__ import annotations

import numpy as np
import pytest

from kgml_grid import records, schedule


def test_window_is_bounded_by_max_tasks_and_by_what_keeps_threads_busy():
    w = schedule.window_for(n_chunks=18, max_tasks=2000, threads=2)
    assert (w.segment, w.tasks, w.tiles) == (18, 4 * 2 * 18, 8)  # whole chains, 4 per thread
    w = schedule.window_for(n_chunks=18, max_tasks=2000, threads=64)
    assert w.segment == 2000 // (4 * 64) == 7 and w.tasks <= 2000  # chains cut in segments
    w = schedule.window_for(n_chunks=3, max_tasks=5, threads=8)
    assert (w.segment, w.tasks) == (1, 5)
    with pytest.raises(ValueError, match="--max-tasks 0: must be >= 1"):
        schedule.window_for(n_chunks=3, max_tasks=0, threads=1)


def test_tiles_come_lazily_row_major_with_their_first_chunk():
    crop = np.array([[0, 5, 1], [2, 0, 3]])
    first = np.array([[0, 2, 4], [0, 0, 1]])
    it = schedule.todo_tiles(crop, first, n_chunks=4)
    assert next(it) == (0, 1, 2)  # a generator: nothing is listed up front
    assert list(it) == [(1, 0, 0), (1, 2, 1)]  # (0, 2) is finished, (1, 1) has no crop
    assert schedule.n_todo(crop, first, 4) == 2 + 4 + 3


def test_logs_skip_torn_lines_and_resume_needs_the_right_state(tmp_path):
    rec = tmp_path / "r.kgml_blocks"
    for c in range(3):
        records.append(rec, "run1", "w0", [c, 0, 0, 10 * c, 10 * c + 10, 5, 0, 0.1, 0.01])
    records.append(rec, "run1", "w0", [0, 0, 1, 0, 10, 5, 1, 0.1, 0.01])
    records.close_logs()
    (log,) = records.log_files(rec)
    with open(log, "a") as fh:
        fh.write("[1,0,1,10,20,5")  # a process killed mid-line
    got = list(records.iter_records(rec))
    assert len(got) == 4 and {r["run_id"] for r in got} == {"run1"}
    done = records.done_array(rec, 1, 2, 3)
    assert done.tolist() == [[[True, True, True], [True, False, False]]]
    assert records.done_prefix(done).tolist() == [[3, 1]]
    crop = np.ones((1, 2), dtype=bool)
    # tile (0, 1) has chunk 0 recorded but no saved state: redone from the start
    assert records.resume_points(rec, done, crop).tolist() == [[3, 0]]
    p = records.state_path(rec, 0, 1, 0)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, _chunk=np.int64(2))  # the slot holds another chunk's state: not trusted
    assert records.resume_points(rec, done, crop).tolist() == [[3, 0]]
    np.savez(p, _chunk=np.int64(0))
    assert records.resume_points(rec, done, crop).tolist() == [[3, 1]]
    assert records.state_path(rec, 0, 1, 0) == records.state_path(rec, 0, 1, 2)  # two slots
