"""Crash points for the durability tests, loaded into `dpor-bot serve` through PYTHONPATH (never shipped).

With DPOR_TEST_CRASH_AT naming a point, the process kills itself there as `kill -9` would:
`<kind>.claimed` (an outbox row claimed, nothing sent), `<kind>.delivered` (Slack or the provider done,
the outcome not recorded), `apply.started` (the request applying, the provider not called) and
`apply.applied` (the provider called, its result being written with the row's outcome, not committed).
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

    start, finish = apply.start_apply, apply.finish

    async def start_apply(db, request_id, awaiting=None):
        req = await start(db, request_id, awaiting)
        if req is not None:
            _crash("apply.started")
        return req

    async def finishing(session, policy, req, outcome, *args, **kw):
        _crash("apply.applied")  # in the transaction that would record the outcome, before it commits
        return await finish(session, policy, req, outcome, *args, **kw)

    worker.OutboxWorker.__init__ = crashing_init
    apply.start_apply, apply.finish = start_apply, finishing


if POINT:
    _install()
