# This file is part of ctrl_bps_parsl.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This software is dual licensed under the GNU General Public License and also
# under a 3-clause BSD license. Recipients may choose which of these licenses
# to use; please see the files gpl-3.0.txt and/or bsd_license.txt,
# respectively.  If you choose the GPL option then the following text applies
# (but note that there is still no warranty even if you opt for BSD instead):
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

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
    """Run the task of ``argv[1]``, write its outcome to ``argv[2]``.

    Parameters
    ----------
    argv : `list` [`str`]
        The script, the pickled task's path and the outcome's path.

    Returns
    -------
    code : `int`
        Exit status (0: the outcome, success or exception, was written).
    """
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
