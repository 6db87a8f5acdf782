"""``jobd`` (the real CLI) with a fault injected: the pruner's pass always raises, and the
supervisor's backoff is short. For the give-up path of supervision in a real process:
``python -m tests.e2e.faulty_daemon serve --config FILE``."""

from __future__ import annotations

import sys

import jobd.daemon
from jobd.cli.main import main
from jobd.runtime.pruner import Pruner
from jobd.supervisor import Backoff, Supervisor


async def _broken(self: Pruner) -> dict[str, int]:
    raise RuntimeError("injected fault")


if __name__ == "__main__":
    Pruner.run_once = _broken  # type: ignore[method-assign]
    jobd.daemon.Supervisor = lambda: Supervisor(  # type: ignore[assignment,misc]
        backoff=Backoff(first_s=0.01, max_s=0.05))
    sys.argv[0] = "jobd"
    main()
