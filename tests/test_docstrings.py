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

"""Every public function, method and class of both packages has a numpydoc
docstring whose sections match its signature (numpydoc's own validation).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import lsst.ctrl.bps.parsl
import lsst_ctrl_bps_parsl_worker
from numpydoc.validate import validate

# The numpydoc checks enforced (numpydoc.validate.ERROR_MSGS has the text):
# GL08 no docstring; PR01 a parameter is not documented; PR02 a documented
# parameter is not in the signature; PR07 a parameter has no description;
# RT01 a function that returns a value has no Returns section; RT03 a returned
# value has no description; YD01 a generator has no Yields section; GL06 an
# unknown section name (a typo hides the section from the rendered page).
# Style checks (summary wording, punctuation, type spelling) are ruff's D rules'.
CHECKS = {"GL06", "GL08", "PR01", "PR02", "PR07", "RT01", "RT03", "YD01"}


def _modules() -> list[str]:
    names = []
    for package in (lsst.ctrl.bps.parsl, lsst_ctrl_bps_parsl_worker):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


def _generated_init(cls: type) -> bool:
    """The class's ``__init__`` is generated from its fields (a dataclass or a
    NamedTuple): numpydoc would ask for every field as a parameter, which the
    class documents as attributes or in its summary instead.
    """
    return dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))


def _public_objects() -> list[str]:
    """Import path of each public function, class and method defined in the
    packages' modules (not the names a module imports from elsewhere).

    Left out, as numpydoc cannot check them sensibly: properties (attributes
    to numpydoc: no Parameters or Returns); `typing.overload` stubs (not kept
    at run time: the implementation, which documents every form, is checked);
    the generated ``__init__`` of dataclasses and NamedTuples (`_generated_init`);
    an exception's arguments (its message); a method override with no
    docstring (it inherits its base's, which is checked and which Sphinx
    shows); a class whose ``__init__`` is given Parsl's signature
    (``__signature__``: `sites.slurm.SlurmProvider` documents its own
    arguments and refers to Parsl's class for the rest).
    """
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            # inspect.unwrap: a function behind functools.lru_cache is checked too.
            if inspect.isfunction(inspect.unwrap(obj)) and obj.__name__ == attr:  # not an alias
                found.append(f"{name}.{attr}")
            if not inspect.isclass(obj):
                continue
            # The class's docstring documents its own ``__init__``'s arguments; a
            # subclass built like its base is documented there.
            init = vars(obj).get("__init__")
            if (
                init is not None
                and not _generated_init(obj)
                and not issubclass(obj, BaseException)
                and "__signature__" not in vars(init)
            ):
                found.append(f"{name}.{attr}")
            for meth, value in vars(obj).items():
                if meth.startswith("_") or isinstance(value, property):
                    continue
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                if not inspect.isfunction(value) or value.__qualname__ != f"{obj.__qualname__}.{meth}":
                    continue
                if value.__doc__ is None and any(
                    getattr(getattr(base, meth, None), "__doc__", None) for base in obj.__mro__[1:]
                ):
                    continue
                found.append(f"{name}.{attr}.{meth}")
    return found


def test_public_docstrings_follow_numpydoc():
    """Each public function, method and class documents every parameter (and
    none that is not there), what it returns or yields, in numpydoc sections.
    """
    paths = _public_objects()
    assert len(paths) > 200, f"only {len(paths)} objects found: the walk of the packages broke"
    offenders = []
    for path in paths:
        for code, message in validate(path)["errors"]:
            # numpydoc drops a first parameter named ``cls`` as if it were a classmethod's,
            # so a plain function's documented ``cls`` looks unknown to it.
            if code in CHECKS and message != "Unknown parameters {'cls'}":
                offenders.append(f"{path}: {code} {message}")
    assert not offenders, f"{len(offenders)} docstring faults:\n" + "\n".join(offenders)
