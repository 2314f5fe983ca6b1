"""What the operator knows of each policy's last sweep, kept in memory for the users' page
(``spec.keep``'s JupyterHub service): how every running server in scope was judged, which
were warned, and when the sweep ran. The controller records it after each sweep; the
service only reads it. A replica that has not swept a policy since it started has no view
of it (the page says so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..engine.rules.decisions import Judged
from ..engine.rules.policy import Policy
from ..engine.rules.signals import ServerKey
from ..engine.rules.warn import Warned
from ..engine.sweep.records import SweepResult

PolicyKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class PolicyView:
    """One policy's last successful sweep, as users are shown it."""

    namespace: str
    name: str
    policy: Policy
    swept_at: datetime  # the Hub's clock at the sweep
    judged: dict[ServerKey, Judged]
    warned: dict[ServerKey, Warned]
    dry_run: bool = False


@dataclass
class PolicyViews:
    """Every policy's latest :class:`PolicyView` in this operator process."""

    _views: dict[PolicyKey, PolicyView] = field(default_factory=dict)

    def record(self, namespace: str, name: str, policy: Policy, result: SweepResult) -> None:
        """Remember what the sweep that just ended saw and decided."""
        self._views[(namespace, name)] = PolicyView(
            namespace,
            name,
            policy,
            result.now,
            {(j.user, j.server): j for j in result.judged},
            dict(result.warned),
            result.dry_run,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop a policy that is gone (or no longer served here)."""
        self._views.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> PolicyView | None:
        """The policy's view, if this process swept it."""
        return self._views.get((namespace, name))
