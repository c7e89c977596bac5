"""Site configurations: one module per kind of site.

The old plugin's class paths work: ``sites.Local``, ``sites.Slurm``,
``sites.TripleSlurm``, ``sites.Torque``, ``sites.work_queue.LocalSrunWorkQueue``,
``sites.princeton.Tiger``, ``sites.slac.Sdf``, ``sites.nersc.CoriKnl`` and
``sites.ccin2p3.Ccin2p3``; ``sites.Generic`` is a site built from YAML alone.
"""

from .ccin2p3 import Ccin2p3
from .generic import Generic
from .local import Local
from .nersc import CoriKnl
from .princeton import Tiger
from .slac import Sdf
from .slurm import Slurm, TripleSlurm
from .torque import Torque
from .work_queue import LocalSrunWorkQueue

__all__ = [
    "Local",
    "Ccin2p3",
    "CoriKnl",
    "Generic",
    "LocalSrunWorkQueue",
    "Sdf",
    "Slurm",
    "Tiger",
    "Torque",
    "TripleSlurm",
]
