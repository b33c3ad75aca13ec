"""The STAC request budget: concurrency, rate and Retry-After pauses, as a state machine and on the wire."""

from __future__ import annotations

import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
import requests
from requests.adapters import HTTPAdapter

from pw_ray.ingest import budget as Bu
from pw_ray.ingest.budget import BudgetedAdapter, BudgetLimits, LocalBudget, RequestBudget


def test_concurrency_limit_grants_leases_until_full_and_again_after_a_release():
    b = RequestBudget(BudgetLimits(max_concurrent=2, lease_s=60))
    l1, w1 = b.try_acquire(0.0)
    l2, _ = b.try_acquire(0.0)
    l3, w3 = b.try_acquire(1.0)
    assert l1 is not None and l2 is not None and w1 == 0
    assert l3 is None and w3 == pytest.approx(59.0)  # until the oldest lease would be reclaimed
    b.release(l1)
    l4, _ = b.try_acquire(1.0)
    assert l4 is not None and b.stats["max_in_flight"] == 2 and b.stats["granted"] == 3


def test_a_lease_never_given_back_is_reclaimed_after_its_time():
    b = RequestBudget(BudgetLimits(max_concurrent=1, lease_s=10))
    lease, _ = b.try_acquire(0.0)
    assert b.try_acquire(9.9)[0] is None
    assert b.try_acquire(10.0)[0] is not None and b.stats["reclaimed"] == 1


def test_rate_limit_spaces_request_starts():
    b = RequestBudget(BudgetLimits(max_per_s=4))
    assert b.try_acquire(0.0)[0] is not None
    lease, wait = b.try_acquire(0.1)
    assert lease is None and wait == pytest.approx(0.15)
    assert b.try_acquire(0.25)[0] is not None
    starts = [0.0, 0.25]
    t = 0.25
    while len(starts) < 10:
        lease, wait = b.try_acquire(t)
        if lease is None:
            t += wait
        else:
            starts.append(t)
    assert starts[-1] == pytest.approx(9 * 0.25)  # 10 starts take 2.25 s at 4 per second


def test_a_pause_stops_everyone_until_it_ends_and_a_shorter_one_does_not_shorten_it():
    b = RequestBudget(BudgetLimits())
    b.pause(3.0, now=10.0)
    b.pause(1.0, now=11.0)  # ends at 12: the pause until 13 stays
    assert b.try_acquire(12.5) == (None, pytest.approx(0.5))
    assert b.try_acquire(13.0)[0] is not None
    assert b.stats["pauses"] == 1 and b.stats["paused_s"] == pytest.approx(3.0)


def test_local_budget_bounds_threads_in_flight():
    budget = LocalBudget(BudgetLimits(max_concurrent=2))
    lock, now, most = threading.Lock(), [0], [0]

    def request():
        lease = budget.acquire()
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        budget.release(lease)

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2 and budget.stats()["granted"] == 12 and budget.stats()["in_flight"] == 0


def test_retry_after_in_seconds_or_as_a_date():
    def resp(value):
        r = requests.Response()
        if value is not None:
            r.headers["Retry-After"] = value
        return r

    assert Bu.retry_after_s(resp("7")) == 7.0
    assert Bu.retry_after_s(resp(None)) is None and Bu.retry_after_s(None) is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= Bu.retry_after_s(resp(later)) <= 30
    assert Bu.retry_after_s(resp("soon")) is None


class _Recorder:
    """A budget that records the order of calls."""

    def __init__(self):
        self.calls = []

    def acquire(self):
        self.calls.append("acquire")
        return len(self.calls)

    def release(self, lease):
        self.calls.append("release")

    def pause(self, seconds):
        self.calls.append(f"pause {seconds:g}")


def _scripted(monkeypatch, answers):
    """HTTPAdapter.send answers from a script: status codes (with Retry-After) or exceptions."""
    script = list(answers)

    def send(self, request, **kw):
        what = script.pop(0)
        if isinstance(what, Exception):
            raise what
        status, retry_after = what
        r = requests.Response()
        r.status_code, r.request, r._content, r._content_consumed = status, request, b"{}", True
        if retry_after is not None:
            r.headers["Retry-After"] = str(retry_after)
        return r

    monkeypatch.setattr(HTTPAdapter, "send", send)
    return script


def _get(adapter):
    s = requests.Session()
    Bu.mount(s, adapter)
    return s.get("http://127.0.0.1:9/search")


def test_a_429_pauses_the_whole_budget_before_its_lease_goes_back_and_does_not_use_up_retries(monkeypatch):
    _scripted(monkeypatch, [(429, 3), (429, 2), (200, None)])
    budget = _Recorder()
    adapter = BudgetedAdapter(budget, retries=0, backoff_s=0.0)
    assert _get(adapter).status_code == 200
    assert budget.calls == ["acquire", "pause 3", "release", "acquire", "pause 2", "release", "acquire", "release"]
    assert adapter.counts == {"sent": 3, "throttled": 2, "errors": 0}


def test_errors_are_retried_with_backoff_by_the_caller_alone_then_raised(monkeypatch):
    _scripted(monkeypatch, [(503, None), requests.ConnectionError("reset by peer"), (502, None)])
    budget = _Recorder()
    slept = []
    monkeypatch.setattr(Bu.time, "sleep", slept.append)
    adapter = BudgetedAdapter(budget, retries=2, backoff_s=0.1)
    assert _get(adapter).status_code == 502  # out of retries: the caller sees the answer
    assert "pause" not in " ".join(budget.calls)  # no Retry-After: nobody else waits
    assert len(slept) == 2 and 0.1 <= slept[0] <= 0.2 and 0.2 <= slept[1] <= 0.4
    _scripted(monkeypatch, [requests.ConnectionError("refused")])
    with pytest.raises(requests.ConnectionError, match="refused"):
        _get(BudgetedAdapter(_Recorder(), retries=0))


def test_a_503_with_retry_after_pauses_everyone(monkeypatch):
    _scripted(monkeypatch, [(503, 4), (200, None)])
    budget = _Recorder()
    assert _get(BudgetedAdapter(budget, retries=1)).status_code == 200
    assert budget.calls[:3] == ["acquire", "pause 4", "release"]


def test_throttling_ends_after_its_own_retry_count(monkeypatch):
    monkeypatch.setattr(Bu, "THROTTLE_RETRIES", 2)
    _scripted(monkeypatch, [(429, 0)] * 3)
    monkeypatch.setattr(Bu.time, "sleep", lambda s: None)
    budget = _Recorder()
    assert _get(BudgetedAdapter(budget, retries=5, backoff_s=0.0)).status_code == 429
    assert budget.calls.count("acquire") == 3


def test_index_tasks_in_flight_follow_the_cluster_but_not_past_the_request_budget():
    from pw_ray.ingest import pipeline as P

    cap = P.INDEX_TASKS_PER_REQUEST_SLOT
    # A big cluster and many parts: the budget of 2 requests in flight caps the index tasks …
    assert P.index_parallelism(1000, 1000, None, 2) == 2 * cap
    # … an explicit chips.ingest_parallelism too (more tasks would only wait for leases) …
    assert P.index_parallelism(1000, 1000, 500, 2) == 2 * cap
    # … and without a limit (in-memory catalogs make no requests) the cluster decides alone.
    assert P.index_parallelism(1000, 1000, None, None) == P.ingest_parallelism(1000, 1000) == 1000
    assert P.index_parallelism(5000, 0, None, None, max_cpus=320) == 320
    assert P.index_parallelism(5000, 0, None, 8, max_cpus=320) == 8 * cap
    assert P.index_parallelism(3, 2, None, 8) == P.ingest_parallelism(3, 2) == 3


def test_the_jobs_budget_outlives_the_handles_of_earlier_sets(ray_session):
    """Each set's index shares the budget again; dropping the first handle must not end the actor
    (a handle found by name does not keep a non-detached actor alive)."""
    import gc

    from pw_ray.ingest.budget import RayBudget, shared_budget
    from pw_ray.ingest.search import ApiSearch

    limits = BudgetLimits(max_concurrent=3)
    first = shared_budget("http://127.0.0.1:9/budget-lifetime", limits)
    lease = first.acquire()
    second = shared_budget("http://127.0.0.1:9/budget-lifetime", limits)
    assert isinstance(second, RayBudget) and second.name == first.name
    del first
    gc.collect()
    time.sleep(1.0)  # an actor without an owning handle would be gone by now
    second.release(lease)
    assert second.stats()["granted"] == 1
    search = ApiSearch("http://127.0.0.1:9/budget-lifetime", "c", "2023-01-01/2023-12-31", 50, 5,
                       max_concurrent_requests=3)
    assert search.share_budget().name == second.name and search.share_budget() is search.budget
