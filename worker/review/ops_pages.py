"""The ops page (workers, queues, each person's work, dead letters) and the dead letters'
replay and discard: for people with the `ops` role only."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from worker.amqp.broker import BROKER_ERRORS
from worker.observability.logs import get_logger
from worker.review.auth import checked_form
from worker.review.desk import Desk
from worker.review.operations import DeadLetterGone
from worker.review.pages import page, signed_in

log = get_logger(__name__)

WORK_HOURS = 24
"""How far back the ops page counts each person's confirmations."""


# ops ----------------------------------------------------------------------------------


async def ops(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    if not person.is_ops:
        raise HTTPException(403, "the ops page is for ops")
    depths = await run_in_threadpool(desk.broker.depths)
    workers = await run_in_threadpool(desk.worker_states)
    try:
        letters = await run_in_threadpool(desk.broker.dead_letters, desk.review.dead_letters_shown)
        broker_error = None
    except BROKER_ERRORS as error:
        letters, broker_error = [], str(error)
    work = await run_in_threadpool(desk.history.work_per_person, time.time() - WORK_HOURS * 3600)
    return page(
        request,
        "ops.html",
        person,
        depths=depths,
        workers=workers,
        work=work,
        work_hours=WORK_HOURS,
        letters=letters,
        done=request.query_params.get("done"),
        broker_error=broker_error,
    )


async def dead_letter_action(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    person = signed_in(request)
    await checked_form(request)
    if not person.is_ops:
        raise HTTPException(403, "only ops may replay or discard dead letters")
    fingerprint = request.path_params["fingerprint"]
    action = request.path_params["action"]
    acts = {"replay": desk.broker.replay, "discard": desk.broker.discard}
    if action not in acts:
        raise HTTPException(404)
    act = acts[action]
    try:
        await run_in_threadpool(act, fingerprint, person.name)
    except DeadLetterGone:
        return RedirectResponse("/ops?done=gone", 303)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    except BROKER_ERRORS as error:
        log.error("review.dead_letter_failed", action=action, error=str(error))
        raise HTTPException(503, "the broker is unavailable: try again") from None
    return RedirectResponse(f"/ops?done={action}", 303)
