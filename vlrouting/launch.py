"""``python -m vlrouting.launch [torchrun options] -m vlrouting.train ...``: torchrun whose failures end in one line.

torchrun (``torch.distributed.run``) answers a worker that exits non-zero with agent log lines, a
``ChildFailedError`` traceback and a failure table (~35 lines). Our workers have already printed what went wrong:
a :class:`~vlrouting.errors.VLRoutingError` is printed once as ``error: <sentence>`` by the rank it belongs to (see
:mod:`vlrouting.train.dist`) and every rank exits with status 2. This wrapper runs torchrun's own ``run`` with the
same arguments, keeps the agent's logging quiet (unless ``LOGLEVEL`` is set) and turns the ChildFailedError into
the workers' exit status, so that sentence stays the last line and scripts see status 2. A worker that crashed
otherwise (its traceback printed above) gets one closing line naming the rank and exit code.
"""

from __future__ import annotations

import logging
import os
import sys

# the agent's "Sending process N closing signal", "failed (exitcode: 2) local_rank: 0 ..." lines
_AGENT_LOGGERS = "torch.distributed.elastic"


class _QuietAgent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_AGENT_LOGGERS) or record.levelno >= logging.CRITICAL


def _quiet_agent_logs() -> None:
    if "LOGLEVEL" in os.environ:  # torchrun's own switch: the user asked for the agent's logs
        return
    quiet = _QuietAgent()
    for handler in logging.getLogger().handlers + logging.getLogger("torch").handlers:
        handler.addFilter(quiet)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(_AGENT_LOGGERS):
            logging.getLogger(name).addFilter(quiet)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    _quiet_agent_logs()
    try:
        run(args)
    except ChildFailedError as exc:
        if any(failure.exitcode == 2 for failure in exc.failures.values()):
            return 2  # a VLRoutingError: its sentence is already on stderr
        rank, failure = exc.get_first_failure()
        print(f"error: worker rank {rank} exited with status {failure.exitcode}; its output above says why.",
              file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
