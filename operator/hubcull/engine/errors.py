"""Why a sweep could not run: every failure that makes a sweep decide nothing."""

from __future__ import annotations


class SweepError(Exception):
    """A sweep that cannot decide; ``reason`` becomes the ``Ready`` condition's reason and the
    message (one sentence, never a credential) its message."""

    reason = "HubError"
    #: What to do about it, when the reason's usual advice does not fit.
    advice: str | None = None

    def __init__(self, message: str, reason: str | None = None, advice: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if advice is not None:
            self.advice = advice


class PodsUnavailable(SweepError):
    """The servers' pods could not be listed (refused by RBAC, or the API server failed)."""

    reason = "PodsUnavailable"
    advice = "check the operator's logs and that the Kubernetes API server answers"


class UsageUnavailable(SweepError):
    """Prometheus could not be read (``spec.usage``): unreachable, too slow, or answering an
    error. Without readings every protection by usage would vanish at once, so the sweep
    decides nothing."""

    reason = "UsageUnavailable"
    advice = (
        "check spec.usage.prometheus and that Prometheus answers the operator; culling "
        "resumes when it does"
    )
