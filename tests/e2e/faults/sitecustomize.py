"""A fault for the log tests, loaded into `dpor-bot serve` through PYTHONPATH (never shipped).

With DPOR_TEST_FAULT set, `/dpor show explode` fails inside the bot with a RuntimeError whose text is
that variable's value: the test puts secrets in it, and shows that the log masks them.
"""

import os

FAULT = os.environ.get("DPOR_TEST_FAULT")


def _install() -> None:
    from bot import views

    overview = views.overview

    async def failing(db, ref):
        if ref == "explode":
            raise RuntimeError(FAULT)
        return await overview(db, ref)

    views.overview = failing


if FAULT:
    _install()
