"""Run one Python task of the local pool in this process.

``python pytask.py TASK RESULT``: ``TASK`` holds ``(sys.path, message)``,
pickled, where ``message`` is Parsl's ``pack_apply_message(func, args,
kwargs)``; the result goes to ``RESULT`` as Parsl's ``serialize((True,
value))``, or ``serialize((False, RemoteExceptionWrapper))`` if the function
raised. Started by the pool's spawner like any job, so it is admitted,
timed and killed like one.
"""

from __future__ import annotations

import os
import pickle
import sys


def main(argv: list[str]) -> int:
    """Run the task of ``argv[1]``, write its outcome to ``argv[2]``."""
    task_path, result_path = argv[1], argv[2]
    with open(task_path, "rb") as stream:
        path, message = pickle.load(stream)
    # The submitting process's path: its functions import here as they did there
    # (and this script's own directory does not shadow anything).
    sys.path[:] = path
    from parsl.app.errors import RemoteExceptionWrapper
    from parsl.serialize import serialize, unpack_apply_message

    try:
        func, args, kwargs = unpack_apply_message(message)
        outcome = (True, func(*args, **kwargs))
    except BaseException:  # noqa: BLE001 - whatever the task raised goes back to its future
        outcome = (False, RemoteExceptionWrapper(*sys.exc_info()))
    try:
        data = serialize(outcome)
    except Exception:  # noqa: BLE001 - an unpicklable result or exception
        data = serialize((False, RemoteExceptionWrapper(*sys.exc_info())))
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as stream:
        stream.write(data)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
