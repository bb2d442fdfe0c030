"""Run callbacks: POST a finished run to the URL its submit gave, signed, retried with
backoff until acknowledged or expired, every attempt recorded (issue 12).

:class:`CallbackDeliverer` does four things. ``check_url`` refuses, at submit, a URL that
``instances.allow``/``deny`` refuses (a 400 naming ``callback.url``); what the host resolves
to is judged again on every connect (:mod:`..drivers.callback_sender`). ``register`` stores
the callback with its run. Its loop claims the callbacks that are due
(:meth:`~..stores.callbacks.CallbackStore.claim_callbacks`: the run finished, the next
attempt's time passed, nobody holding them), up to ``runs.callback_max_sending`` at a time,
and delivers each in a task: the attempt is recorded, then sent, then its answer recorded
with what :func:`~openclaw_orchestrator.domain.callbacks.decide` makes of it. ``view`` is
what the API shows (never the secret).

Runs that finish are found by that loop's poll (``runs.callback_poll_interval``);
:meth:`CallbackDeliverer.wake` starts a look at once.

The body is the run as ``GET /api/orchestrator/runs/{id}`` shows it (:func:`run_info`,
without the callback), as of when it finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import secrets
import time
from collections.abc import Callable

from ...domain.addresses import AddressPolicy, AddressRefused
from ...domain.callbacks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackAttempt,
    CallbackPolicy,
    CallbackRecord,
    CallbackState,
    decide,
    sign,
)
from ...domain.runs import RunRecord
from ...errors import InvalidRequestError, OrchestratorError
from ...instance_url import url_host
from ...models import CallbackAttemptInfo, CallbackInfo, CallbackSpec, RunInfo, redact_url
from ...settings import RunSettings
from ..drivers.callback_sender import Sender
from ..logs import get_logger
from ..stores.callbacks import CallbackStore
from ..stores.runs import RunStore
from .clock import moment, moment_or_none
from .runs import public_request

__all__ = ["CallbackDeliverer", "callback_policy", "run_info"]

log = get_logger("orchestrator")

DELIVERY_PREFIX = "dlv_"
LEASE_MARGIN = 30.0
"""Seconds a delivery's lease lasts beyond its attempt's timeout: the store's writes
before and after the request."""


def run_info(run: RunRecord, callback: CallbackInfo | None = None) -> RunInfo:
    """What the API shows of a run, and what a callback POSTs (never the secret)."""
    return RunInfo(
        run_id=run.id,
        kind=run.kind,
        state=run.state,
        request=public_request(run.request),
        created_at=moment(run.created_at),
        updated_at=moment(run.updated_at),
        deadline_at=moment(run.deadline_at),
        started_at=moment_or_none(run.started_at),
        finished_at=moment_or_none(run.finished_at),
        attempts=run.attempts,
        instance=run.instance,
        cancel_requested=run.cancel_requested,
        result=run.result,
        error=run.error,  # type: ignore[arg-type]  # validated into ErrorBody
        callback=callback,
    )


def callback_policy(settings: RunSettings) -> CallbackPolicy:
    """The retry schedule of ``runs.callback_*``."""
    return CallbackPolicy(
        base=settings.callback_backoff_base,
        cap=settings.callback_backoff_max,
        max_attempts=settings.callback_max_attempts,
        expiry=settings.callback_expiry,
    )


class CallbackDeliverer:
    """Stores, delivers and shows run callbacks (module docstring). ``clock`` is wall-clock
    epoch seconds; ``rng`` spreads retries (full jitter); a delivery's lease lasts its
    attempt's timeout and ``lease_margin`` seconds."""

    def __init__(
        self,
        store: CallbackStore,
        runs: RunStore,
        sender: Sender,
        settings: RunSettings,
        address_policy: AddressPolicy,
        *,
        holder: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        lease_margin: float = LEASE_MARGIN,
    ) -> None:
        self._store, self._runs, self._sender = store, runs, sender
        self._settings, self._address_policy = settings, address_policy
        self._policy = callback_policy(settings)
        self.holder = holder
        self._clock = clock
        self._lease_ttl = settings.callback_timeout + lease_margin
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not secrets
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<CallbackDeliverer holder={self.holder} sending={len(self._sending)}>"

    # -- the API's side --------------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host ``instances.allow``/``deny`` refuses outright (400 naming
        ``callback.url``); its resolved addresses are judged at every connect."""
        try:
            self._address_policy.check_host(url_host(url))
        except AddressRefused as exc:
            raise InvalidRequestError(f"callback.url: {exc}", field="callback.url") from None

    async def register(self, run: RunRecord, spec: CallbackSpec) -> CallbackInfo:
        """Store ``spec`` as ``run``'s callback (a replayed submit keeps the first one)."""
        record = CallbackRecord(
            run_id=run.id,
            url=spec.url,
            secret=spec.secret.get_secret_value(),
            delivery_id=DELIVERY_PREFIX + secrets.token_urlsafe(18),
            created_at=self._clock(),
        )
        stored = await self._store.add_callback(record)
        if stored.delivery_id == record.delivery_id:
            return _info(stored, [])
        self._wake.set()  # a replay: its run may have finished already
        return _info(stored, await self._store.attempts(run.id))

    async def view(self, run_id: str) -> CallbackInfo | None:
        """The run's callback with its attempts, or None when it has none."""
        record = await self._store.get_callback(run_id)
        if record is None:
            return None
        return _info(record, await self._store.attempts(run_id))

    def on_finish(self, run: RunRecord) -> None:
        """:class:`~.runs.RunService`'s hook: ``run`` just finished, so its callback (if
        any) is due now: look at once rather than at the next poll."""
        self._wake.set()

    # -- background ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._claim_loop(), name="callbacks")

    async def aclose(self) -> None:
        """Stop claiming and stop the deliveries in flight: an attempt cut short stays
        recorded without an answer and is retried once its lease runs out."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        tasks = list(self._sending.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._sender.aclose()

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._claim()
            except OrchestratorError as exc:  # the store is away: try again later
                log.warning("callbacks.claim_failed", error=exc.code)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.callback_poll_interval):
                    await self._wake.wait()

    async def _claim(self) -> None:
        free = self._settings.callback_max_sending - len(self._sending)
        if free <= 0:
            return
        claimed = await self._store.claim_callbacks(
            self.holder, self._lease_ttl, self._clock(), free
        )
        for record in claimed:
            task = asyncio.create_task(self._deliver(record), name=f"callback-{record.run_id}")
            self._sending[record.run_id] = task
            task.add_done_callback(functools.partial(self._done, record.run_id))

    def _done(self, run_id: str, _task: asyncio.Task[None]) -> None:
        self._sending.pop(run_id, None)
        self._wake.set()  # room for another, and a retry may be due at once

    # -- one delivery ----------------------------------------------------------------------

    async def _deliver(self, record: CallbackRecord) -> None:
        try:
            await self._attempt(record)
        except OrchestratorError as exc:  # the store failed: the lease runs out, retried
            log.warning("callbacks.write_failed", run_id=record.run_id, error=exc.code)
        except Exception:
            log.exception("callbacks.delivery_crashed", run_id=record.run_id)

    async def _attempt(self, record: CallbackRecord) -> None:
        """Claim, then act: the attempt is recorded before it is sent."""
        run = await self._runs.get_run(record.run_id)
        if run is None or run.finished_at is None:
            return  # purged meanwhile (the callback went with it); or never: claims need it
        expires_at = run.finished_at + self._policy.expiry
        now = self._clock()
        if now >= expires_at:
            await self._end(record, None, "expired", now)
            return
        n = await self._store.begin_attempt(record.run_id, self.holder, record.epoch, now)
        if n is None:
            return  # the lease moved on
        body = run_info(run).model_dump_json().encode()
        timestamp = int(now)
        headers = {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(record.secret, timestamp, body),
            DELIVERY_HEADER: record.delivery_id,
        }
        answer = await self._sender.post(record.url, body, headers, self._settings.callback_timeout)
        done = self._clock()
        decision = decide(
            n, answer.status, now=done, expires_at=expires_at, policy=self._policy, rng=self._rng
        )
        attempt = CallbackAttempt(
            run_id=record.run_id,
            n=n,
            at=now,
            status=answer.status,
            error=answer.error,
            latency_ms=answer.latency_ms,
        )
        await self._end(record, attempt, decision.state, decision.next_at or done)
        log.info(
            "callbacks.attempted",
            run_id=record.run_id,
            url=redact_url(record.url),
            attempt=n,
            status=answer.status,
            error=answer.error,
            outcome=decision.state,
        )

    async def _end(
        self,
        record: CallbackRecord,
        attempt: CallbackAttempt | None,
        state: CallbackState,
        next_at: float,
    ) -> None:
        await self._store.end_attempt(
            record.run_id,
            self.holder,
            record.epoch,
            attempt=attempt,
            state=state,
            next_at=next_at,
            at=self._clock(),
        )


def _info(record: CallbackRecord, attempts: list[CallbackAttempt]) -> CallbackInfo:
    return CallbackInfo(
        url=record.url,
        state=record.state,
        delivery_id=record.delivery_id,
        next_attempt_at=(
            moment(record.next_at) if record.state == "pending" and record.attempts else None
        ),
        ended_at=moment_or_none(record.ended_at),
        attempts=[
            CallbackAttemptInfo(
                n=a.n, at=moment(a.at), status=a.status, error=a.error, latency_ms=a.latency_ms
            )
            for a in attempts
        ],
    )
