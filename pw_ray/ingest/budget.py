"""One request budget for a STAC API across a whole job: concurrency, rate and ``Retry-After``.

Every HTTP request of :class:`pw_ray.ingest.search.ApiSearch` goes through
:class:`BudgetedAdapter` (a ``requests`` transport adapter), which takes a lease from a budget
before it sends and gives it back when the answer is in. The budget holds three limits:

* at most ``max_concurrent`` requests in flight (``stac.max_concurrent_requests``),
* request starts at least ``1 / max_per_s`` seconds apart (``stac.max_requests_per_s``),
* a pause: a ``429`` (or ``503``) answer with ``Retry-After: N`` stops **every** caller of the
  budget for N seconds, not only the one that got it (a throttled API is throttled for all).

Without Ray the budget is :class:`LocalBudget` (threads of one process). In a Ray job it is one
named actor per job and limits (:func:`shared_budget`, created by the driver before the index
tasks start and handed to them inside the searcher), so the limits hold for all tasks together
however many run. The state machine both use is :class:`RequestBudget` (pure, clock passed in).

Throttling slows the job down instead of failing points: a throttled request (429) is retried
up to :data:`THROTTLE_RETRIES` times, waiting what the server asked (or the backoff when it did
not say), without using up ``stac.retries``, which counts real errors (5xx, timeouts, dropped
connections).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

#: Answers retried with backoff (``stac.retries`` times); 429 and 503 may carry ``Retry-After``.
RETRY_STATUS = (429, 500, 502, 503, 504)
#: Answers whose ``Retry-After`` pauses every caller of the budget.
PAUSE_STATUS = (429, 503)
#: How often one request is retried after a 429 before it counts as failed: at the API's pace
#: this is minutes of waiting, long enough to ride out a throttling episode, bounded so that a
#: permanently throttled key (a blocked client) still ends.
THROTTLE_RETRIES = 30
#: A waiting request sleeps at most this long before it looks again (the pause may be lifted).
_MAX_SLEEP_S = 5.0
#: The longest ``Retry-After`` honoured, seconds; longer asks are capped (and logged).
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class BudgetLimits:
    """The limits of one budget (``None``: no limit of that kind)."""

    max_concurrent: int | None = None
    max_per_s: float | None = None
    #: A lease not given back after this many seconds is reclaimed (its holder died mid-request).
    lease_s: float = 120.0

    def __post_init__(self):
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be ≥ 1 or None, got {self.max_concurrent}")
        if self.max_per_s is not None and not self.max_per_s > 0:
            raise ValueError(f"max_per_s must be > 0 or None, got {self.max_per_s}")


class RequestBudget:
    """The budget's state: leases in flight, the next start time the rate allows, a pause.

    Pure: every method takes ``now`` (seconds, monotonic). :meth:`try_acquire` either grants a
    lease or says how long to wait before asking again.
    """

    def __init__(self, limits: BudgetLimits):
        self.limits = limits
        self.leases: dict[int, float] = {}  # lease id → deadline
        self.next_start = float("-inf")
        self.paused_until = float("-inf")
        self._next_id = 0
        self.stats = {"granted": 0, "max_in_flight": 0, "pauses": 0, "paused_s": 0.0, "reclaimed": 0}

    def try_acquire(self, now: float) -> tuple[int | None, float]:
        """``(lease, 0)`` when a request may start now, else ``(None, seconds to wait)``."""
        if now < self.paused_until:
            return None, self.paused_until - now
        lim = self.limits
        if lim.max_concurrent is not None and len(self.leases) >= lim.max_concurrent:
            self._reclaim(now)
            if len(self.leases) >= lim.max_concurrent:
                return None, max(0.0, min(self.leases.values()) - now)  # woken earlier by a release
        if lim.max_per_s is not None:
            if now < self.next_start:
                return None, self.next_start - now
            self.next_start = max(now, self.next_start) + 1.0 / lim.max_per_s
        lease = self._next_id
        self._next_id += 1
        self.leases[lease] = now + lim.lease_s
        self.stats["granted"] += 1
        self.stats["max_in_flight"] = max(self.stats["max_in_flight"], len(self.leases))
        return lease, 0.0

    def release(self, lease: int) -> None:
        self.leases.pop(lease, None)

    def pause(self, seconds: float, now: float) -> None:
        """Nobody starts a request for ``seconds`` from ``now`` (a longer pause already set stays)."""
        until = now + seconds
        if until > self.paused_until:
            self.stats["pauses"] += 1
            self.stats["paused_s"] += until - max(now, self.paused_until)
            self.paused_until = until

    def _reclaim(self, now: float) -> None:
        dead = [k for k, deadline in self.leases.items() if deadline <= now]
        for k in dead:
            del self.leases[k]
        self.stats["reclaimed"] += len(dead)


class LocalBudget:
    """A :class:`RequestBudget` shared by the threads of one process (the fallback without Ray)."""

    def __init__(self, limits: BudgetLimits):
        self.limits = limits
        self._state = RequestBudget(limits)
        self._cond = threading.Condition()

    def acquire(self) -> int:
        with self._cond:
            while True:
                lease, wait = self._state.try_acquire(time.monotonic())
                if lease is not None:
                    return lease
                self._cond.wait(timeout=min(max(wait, 0.001), _MAX_SLEEP_S))

    def release(self, lease: int) -> None:
        with self._cond:
            self._state.release(lease)
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        with self._cond:
            self._state.pause(seconds, time.monotonic())

    def stats(self) -> dict:
        with self._cond:
            return dict(self._state.stats, in_flight=len(self._state.leases))

    def __reduce__(self):  # a lock does not cross processes: the copy is a fresh budget
        return (LocalBudget, (self.limits,))


class _BudgetActor:
    """The budget of a Ray job: an async actor, so waiting callers cost no thread (see
    :func:`shared_budget`). All methods run on one event loop: the state needs no lock."""

    def __init__(self, limits: BudgetLimits):
        self._state = RequestBudget(limits)
        self._changed: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:  # made on the actor's own event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self) -> int:
        cond = self._cond()
        async with cond:
            while True:
                lease, wait = self._state.try_acquire(time.monotonic())
                if lease is not None:
                    return lease
                try:
                    await asyncio.wait_for(cond.wait(), timeout=min(max(wait, 0.001), _MAX_SLEEP_S))
                except asyncio.TimeoutError:
                    pass

    async def release(self, lease: int) -> None:
        cond = self._cond()
        async with cond:
            self._state.release(lease)
            cond.notify_all()

    async def pause(self, seconds: float) -> None:
        self._state.pause(seconds, time.monotonic())

    async def stats(self) -> dict:
        return dict(self._state.stats, in_flight=len(self._state.leases))


class RayBudget:
    """A handle on the job's budget actor, usable from the driver and from any task."""

    def __init__(self, actor, name: str, limits: BudgetLimits):
        self.actor, self.name, self.limits = actor, name, limits

    def acquire(self) -> int:
        import ray

        return ray.get(self.actor.acquire.remote())

    def release(self, lease: int) -> None:
        self.actor.release.remote(lease)  # nothing to wait for

    def pause(self, seconds: float) -> None:
        import ray

        ray.get(self.actor.pause.remote(seconds))  # in force before this caller asks again

    def stats(self) -> dict:
        import ray

        return ray.get(self.actor.stats.remote())


#: Name prefix of the budget actors (one per job and API and limits).
ACTOR_PREFIX = "pw-ray-stac-budget"


def budget_name(key: str, limits: BudgetLimits) -> str:
    """The actor name of the budget for ``key`` (the API's URL) and ``limits``."""
    text = json.dumps([key, limits.max_concurrent, limits.max_per_s], sort_keys=True)
    return f"{ACTOR_PREFIX}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


#: The budget actors this process made, by name. A non-detached actor lives while the handle its
#: maker got is referenced (a handle found by name does not keep it alive): kept here, the
#: budget lives as long as the driver, i.e. the job, however many searchers come and go.
_MADE_HERE: dict[str, object] = {}


def shared_budget(key: str, limits: BudgetLimits):
    """The job's budget for ``key``: the named actor (made on first use, found afterwards), or a
    :class:`LocalBudget` when Ray is not running.

    Call it on the driver: an actor belongs to the process that made it and ends with it, and
    the driver outlives every task. Actors are named within the job's namespace, so each job
    (``ray job submit``, each driver) gets its own budget; within a job all sets and stages
    that search the same API with the same limits share one.
    """
    import ray

    if not ray.is_initialized():
        return LocalBudget(limits)
    name = budget_name(key, limits)
    try:
        actor = ray.get_actor(name)
    except ValueError:  # not made yet in this job (or its maker is gone): make it here
        actor = (ray.remote(_BudgetActor)
                 .options(name=name, get_if_exists=True, num_cpus=0, max_concurrency=10_000)
                 .remote(limits))
        _MADE_HERE[name] = actor
    return RayBudget(actor, name, limits)


# ----------------------------------------------------------------------------- HTTP
def retry_after_s(resp: requests.Response | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date); None without one."""
    if resp is None:
        return None
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class BudgetedAdapter(HTTPAdapter):
    """A ``requests`` adapter that sends each request inside a lease of ``budget`` and retries.

    Errors (5xx, timeouts, dropped or refused connections) are retried ``retries`` times with
    exponential backoff and jitter (``backoff_s × 2^k``, only this caller waits). A 429 is
    retried up to :data:`THROTTLE_RETRIES` times: its ``Retry-After`` (or, without one, the
    backoff) pauses the whole budget, so every task slows down together. A 503 with
    ``Retry-After`` pauses the budget too and counts as an error. The lease is held only while
    the request is on the wire, never while waiting.
    """

    def __init__(self, budget, retries: int = 5, backoff_s: float = 0.5, rng: random.Random | None = None):
        super().__init__(max_retries=0)  # retries happen here, outside the lease
        self.budget, self.retries, self.backoff_s = budget, int(retries), float(backoff_s)
        self._rng = rng or random.Random()
        #: Requests sent (attempts, retries included) and answers by kind, for logs and tests.
        self.counts = {"sent": 0, "throttled": 0, "errors": 0}

    def _backoff(self, attempt: int) -> float:
        return self.backoff_s * (2 ** attempt) * (1 + self._rng.random())

    def send(self, request, **kwargs):
        errors = throttles = 0
        while True:
            lease = self.budget.acquire()
            resp, err = None, None
            try:
                self.counts["sent"] += 1
                resp = super().send(request, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as e:
                err = e
            status = resp.status_code if resp is not None else None
            try:
                if err is None and status not in RETRY_STATUS:
                    return resp
                wait_asked = retry_after_s(resp)
                if wait_asked is not None and wait_asked > MAX_RETRY_AFTER_S:
                    log.warning("%s asked to wait %.0f s; waiting %.0f s", request.url, wait_asked,
                                MAX_RETRY_AFTER_S)
                    wait_asked = MAX_RETRY_AFTER_S
                if status == 429:
                    throttles += 1
                    self.counts["throttled"] += 1
                    if throttles > THROTTLE_RETRIES:
                        return resp  # the caller sees the 429 (a transient failure)
                    # Everyone waits: what the server asked, or our backoff when it did not say.
                    # Paused before the lease goes back, so no other caller slips in between.
                    self.budget.pause(wait_asked if wait_asked else self._backoff(min(throttles - 1, 6)))
                    own_wait = 0.0
                else:
                    errors += 1
                    self.counts["errors"] += 1
                    if errors > self.retries:
                        if err is not None:
                            raise err
                        return resp
                    own_wait = self._backoff(errors - 1)
                    if status in PAUSE_STATUS and wait_asked:
                        self.budget.pause(wait_asked)
                        own_wait = 0.0
                if resp is not None:
                    resp.close()
            finally:
                self.budget.release(lease)
            if own_wait:
                time.sleep(own_wait)  # only this caller backs off from an error


def mount(session: requests.Session, adapter: BudgetedAdapter) -> None:
    """Route every http(s) request of ``session`` through ``adapter``."""
    session.mount("http://", adapter)
    session.mount("https://", adapter)


__all__ = ["BudgetLimits", "BudgetedAdapter", "LocalBudget", "RayBudget", "RequestBudget", "THROTTLE_RETRIES",
           "budget_name", "mount", "retry_after_s", "shared_budget"]
