"""pw_ray.ingest.workpool: plain Ray tasks, a bounded number in flight, timed in their workers."""

from __future__ import annotations

import time

import pytest

from pw_ray.ingest.workpool import TaskTime, occupancy, run_bounded


def _square_logged(x: int, folder: str, pause_s: float) -> int:
    """x², after writing when it ran (start, end) to ``folder``/x."""
    t0 = time.time()
    time.sleep(pause_s)
    with open(f"{folder}/{x}", "w") as f:
        f.write(f"{t0} {time.time()}")
    return x * x


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def test_results_come_in_item_order_and_no_more_than_in_flight_run_at_once(ray_session, tmp_path):
    items = [5, 3, 8, 1, 7, 2]
    # Half a CPU each: the 2-CPU session could run 4 at once; the bound holds it to 2.
    run = run_bounded(_square_logged, items, 2, args=(str(tmp_path), 0.2), num_cpus=0.5)
    assert run.results == [x * x for x in items]
    assert len(run.times) == len(items) and all(isinstance(t, TaskTime) for t in run.times)
    assert all(run.start <= t.start <= t.end <= run.end for t in run.times)
    spans = [tuple(map(float, (tmp_path / str(x)).read_text().split())) for x in items]
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most <= 2


def test_a_failing_task_raises_its_error_and_stops_the_run(ray_session):
    with pytest.raises(ValueError, match="item 3 is bad"):
        run_bounded(_fail_on, list(range(8)), 2, args=(3,))
    with pytest.raises(ValueError, match="in_flight"):
        run_bounded(_fail_on, [1], 0, args=(3,))


def test_occupancy_counts_busy_time_and_gaps_per_worker():
    times = [TaskTime("a", 0.0, 4.0, 3.5), TaskTime("a", 5.0, 9.0, 4.0), TaskTime("b", 0.5, 9.5, 9.0)]
    occ = occupancy(times, slots=2, wall_s=10.0)
    assert occ["tasks"] == 3 and occ["workers"] == 2
    assert occ["busy_s"] == pytest.approx(17.0) and occ["cpu_s"] == pytest.approx(16.5)
    assert occ["gaps_s"] == pytest.approx(1.0)  # worker a idled 4.0 → 5.0 between its tasks
    assert occ["occupancy"] == pytest.approx(17.0 / 20.0)
