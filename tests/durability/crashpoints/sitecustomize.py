"""Crash points for the durability tests, loaded into `dpor-bot serve` through PYTHONPATH (never shipped).

With DPOR_TEST_CRASH_AT naming a point, the process kills itself there as `kill -9` would:
`<kind>.claimed` (an outbox row claimed, nothing sent), `<kind>.delivered` (Slack or the provider done,
the outcome not recorded), `apply.started` (the request applying, the provider not called) and
`apply.applied` (the provider called, the outcome not recorded).
"""

import os

CRASH_AT_ENV = "DPOR_TEST_CRASH_AT"
POINT = os.environ.get(CRASH_AT_ENV)


def _crash(point: str) -> None:
    if point == POINT:
        os.write(2, f"{CRASH_AT_ENV}={point}: killing this process\n".encode())
        os.kill(os.getpid(), 9)


def _install() -> None:
    from bot import apply, worker

    def at_edges(kind, deliver):
        async def delivered(row):
            _crash(f"{kind}.claimed")
            outcome = await deliver(row)
            _crash(f"{kind}.delivered")
            return outcome

        return delivered

    init = worker.OutboxWorker.__init__

    def crashing_init(self, db, deliverers, **options):
        init(self, db, {kind: at_edges(kind, d) for kind, d in deliverers.items()}, **options)

    start, finish = apply.start_apply, apply.finish_apply

    async def start_apply(db, request_id, awaiting=None):
        req = await start(db, request_id, awaiting)
        if req is not None:
            _crash("apply.started")
        return req

    async def finish_apply(db, policy, request_id, outcome):
        _crash("apply.applied")
        return await finish(db, policy, request_id, outcome)

    worker.OutboxWorker.__init__ = crashing_init
    apply.start_apply, apply.finish_apply = start_apply, finish_apply


if POINT:
    _install()
