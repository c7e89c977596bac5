"""A site whose select_executor refuses one job at run time (for tests)."""

from lsst.ctrl.bps.parsl.sites import Local


class PickySite(Local):
    """Local, but refuses job 'refused' when it is about to run."""

    def select_executor(self, job):
        if job.name == "refused" and not getattr(self, "_preparing", False):
            raise RuntimeError("no executor for you")
        return super().select_executor(job)

    def validate(self):
        self._preparing = True
        super().validate()
