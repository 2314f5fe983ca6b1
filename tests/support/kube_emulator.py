"""An API-server-like Kubernetes emulator for kopf end-to-end tests, built on kmock.

kmock's :class:`kmock.KubernetesEmulator` (kmock 0.8) is an in-memory object store with
discovery, list, watch, create, merge-patch and delete. It is deliberately simplistic, and
kopf needs more of a real API server than it offers. :class:`ApiServerEmulator` keeps kmock's
HTTP server, discovery endpoints, request log, object history (``emulator.objects``) and its
DSL for fault injection (``emulator['patch', ...] << 500``), and replaces the stateful
reactions with these API-server semantics:

* ``metadata.resourceVersion`` from one monotonic counter on every write (kmock has none;
  its list returns the placeholder ``'...'``), ``metadata.uid`` (kopf keys its per-object
  memory by uid), ``creationTimestamp``, ``generateName`` (kopf posts events with it).
* ``metadata.generation``: 1 on creation, incremented when anything but ``metadata`` (and
  ``status`` if the resource has a status subresource) changes, as for custom resources.
* The status subresource: a ``/status`` patch changes only ``status``; a main-resource patch
  or create ignores ``status`` when the resource declares a ``status`` subresource.
* Patches by content type: JSON merge-patch (RFC 7386), JSON-patch (RFC 6902) with
  ``422 Unprocessable Entity`` on a failed ``test`` op (kopf's optimistic-concurrency check
  for finalizers relies on that; kmock answers 500), strategic-merge-patch approximated as
  merge-patch, anything else 415. ``PUT`` replaces an object. A stale
  ``metadata.resourceVersion`` in a write is a 409 Conflict. No-op writes change nothing
  and emit no watch event, as on a real server.
* Finalizers: DELETE of an object with finalizers only sets ``deletionTimestamp``; the object
  is deleted when a write leaves it with no finalizers; new finalizers cannot be added to an
  object being deleted (422).
* Watch streams resume from ``?resourceVersion=`` by replaying a change log (kmock replays
  every object as ADDED on each reconnect), honour ``timeoutSeconds``, ``labelSelector``,
  ``fieldSelector`` and ``sendInitialEvents``, and answer ``410 Gone`` for versions older than
  :meth:`ApiServerEmulator.compact`.
* Paths: kmock 0.8 cannot parse ``/api/v1/namespaces`` (a 500) and reads
  ``/api/v1/namespaces/NAME`` as a namespace with no resource, so requests are parsed here
  (:func:`parse_request`, used by an override of kmock's ``__call__``). Discovery of the
  core group says ``groupVersion: v1`` (kmock: ``/v1``).
* State changes happen in kmock's fallback reactions, so a test reaction that intercepts a
  request (fault injection) leaves the state unchanged; kmock changes the state first.

* RBAC as a table of refusals: everything is allowed unless a test calls
  :meth:`ApiServerEmulator.deny` (undone by :meth:`~ApiServerEmulator.allow`) for a verb, a
  resource and optionally a namespace. A refused request is answered ``403 Forbidden`` with the
  API server's message, and ``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews``
  answers from the same table (``201``, the review with ``status.allowed``; a refusal has no
  ``reason``, as RBAC has no opinion then). Test reactions (``emulator[...] << 403``) still
  come first, as for every other request.

Not emulated: authentication, RBAC roles and bindings, admission and schema validation,
namespace existence checks and cascading deletion, owner references and garbage collection,
pagination (``limit``/``continue`` return everything at once), server-side apply, bookmarks.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Final

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal.rendering import StreamingError  # for the __call__ workaround only

ALL_VERBS: Final = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
NAME_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # as in Kubernetes' generateName
JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCHES: Final = frozenset(
    {"application/merge-patch+json", "application/strategic-merge-patch+json"}
)
#: Who the emulator says is asking, in RBAC's messages (there is no authentication here).
USER: Final = "system:serviceaccount:hubcull:hubcull"
#: The RBAC verb of each request kmock classifies (PUT is "update", see rbac_verb).
RBAC_VERBS: Final = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.UPDATE: "patch",
    kmock.action.DELETE: "delete",
}
IMMUTABLE_METADATA: Final = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
)

Body = dict[str, Any]
ObjectKey = tuple[kmock.resource, str | None, str]
#: A refusal: (verb, API group, resource, namespace or None for every namespace)
Refusal = tuple[str, str, str, str | None]


@dataclasses.dataclass(frozen=True)
class ResourceDecl:
    """A resource to declare in the emulator's discovery endpoints."""

    api_version: str  # "v1" or "group/version"
    plural: str
    kind: str
    namespaced: bool
    singular: str | None = None
    shortnames: tuple[str, ...] = ()
    status: bool = False  # whether it has a status subresource
    verbs: frozenset[str] = ALL_VERBS

    @property
    def key(self) -> str:
        """The resource as kmock names it: ``v1/secrets``, ``hubcull.io/v1alpha1/cullpolicies``."""
        return f"{self.api_version}/{self.plural}"


DEFAULT_RESOURCES: Final[tuple[ResourceDecl, ...]] = (
    ResourceDecl(
        "v1", "namespaces", "Namespace", namespaced=False, shortnames=("ns",), status=True
    ),
    ResourceDecl("v1", "events", "Event", namespaced=True, shortnames=("ev",)),
    ResourceDecl("v1", "secrets", "Secret", namespaced=True),
    ResourceDecl("v1", "configmaps", "ConfigMap", namespaced=True, shortnames=("cm",)),
    # KubeSpawner's singleuser pods, for spec.kernels (via: pods) and spec.usage
    ResourceDecl("v1", "pods", "Pod", namespaced=True, shortnames=("po",), status=True),
    # kopf watches CRDs for new resources unless settings.scanning.disabled is set
    # (cluster-wide operators); with none stored, that watch is empty.
    ResourceDecl(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        shortnames=("crd", "crds"),
        status=True,
    ),
    ResourceDecl(
        "hubcull.io/v1alpha1",
        "cullpolicies",
        "CullPolicy",
        namespaced=True,
        singular="cullpolicy",
        shortnames=("cullpol",),
        status=True,
    ),
    # what `kubectl auth can-i` and the operator ask RBAC with (create only, cluster-scoped)
    ResourceDecl(
        "authorization.k8s.io/v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        namespaced=False,
        verbs=frozenset({"create"}),
    ),
    # kopf's peering CRDs; kopf stores the peers in .status, and its CRDs have no
    # status subresource. Because they are discoverable here, an operator started without
    # standalone=True auto-detects peering (name "default"), exactly as in a cluster.
    ResourceDecl("kopf.dev/v1", "kopfpeerings", "KopfPeering", namespaced=True),
    ResourceDecl("kopf.dev/v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
)


def k8s_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """A Kubernetes ``Status`` failure as kmock renders it."""
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details={"reason": reason}
    )


def now_timestamp() -> str:
    """The current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge-patch (RFC 7386): dicts merge, ``None`` deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- request parsing (replaces kmock 0.8's parser, see the module docstring) ----------------


@dataclasses.dataclass(frozen=True)
class ApiPath:
    """A Kubernetes API path split into its parts; all None for non-API paths."""

    group: str | None = None
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> ApiPath:
    """Split ``/api/v1/namespaces/ns/secrets/name`` etc. into its parts.

    ``/api/v1/namespaces/NAME[/status|/finalize]`` addresses the namespace object itself.
    """
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    elif len(parts) == 2 and parts[0] == "apis":
        return ApiPath(group=parts[1])
    else:
        return ApiPath()
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in {"status", "finalize"}:
        namespace, rest = rest[1], rest[2:]
    return ApiPath(
        group=group,
        version=version,
        plural=rest[0] if rest else None,
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def guess_action(api: ApiPath, method: str, params: Mapping[str, str]) -> kmock.action | None:
    """The Kubernetes verb of a request, as kmock classifies them (PUT is left unclassified)."""
    if api.group is None or api.plural is None:
        return None
    if method == "GET" and params.get("watch") in {"true", "1"}:
        return kmock.action.WATCH
    if api.name is None:
        return {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
    return {
        "GET": kmock.action.FETCH,
        "PATCH": kmock.action.UPDATE,
        "DELETE": kmock.action.DELETE,
    }.get(method)


async def parse_request(raw_request: aiohttp.web.BaseRequest, *, id: int) -> kmock.Request:
    """Build kmock's request object with correctly parsed Kubernetes parts."""
    body = await raw_request.read()
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    api = parse_api_path(raw_request.path)
    params = dict(raw_request.query)
    resource = (
        kmock.resource(group=api.group, version=api.version, plural=api.plural)
        if api.group is not None
        else None
    )
    return kmock.Request(
        id=id,
        raw_request=raw_request,
        url=raw_request.url,
        method=raw_request.method,
        params=params,
        headers=dict(raw_request.headers),
        cookies=dict(raw_request.cookies),
        data=data,
        body=body,
        text=text,
        action=guess_action(api, raw_request.method.upper(), params),
        resource=resource,
        namespace=api.namespace,
        name=api.name,
        subresource=api.subresource,
    )


# --- selectors --------------------------------------------------------------------------------

Selector = Callable[[Body], bool]
_SET_REQUIREMENT = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")
_EQUALITY_REQUIREMENT = re.compile(r"^([^!=\s]+)\s*(==|=|!=)\s*(.*)$")


def _split_requirements(selector: str) -> list[str]:
    """Split a selector on commas outside parentheses (``a in (x,y),b`` has 2 requirements)."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [part for part in parts if part]


def label_selector(selector: str) -> Selector:
    """A predicate for ``labelSelector``: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, in/notin."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for req in _split_requirements(selector):
        if match := _SET_REQUIREMENT.match(req):
            key, op, raw = match.groups()
            values = {v.strip() for v in raw.split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif match := _EQUALITY_REQUIREMENT.match(req):
            key, op, value = match.group(1), match.group(2), match.group(3).strip()
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif req.startswith("!"):
            absent = req[1:].strip()
            checks.append(lambda labels, k=absent: k not in labels)
        else:
            checks.append(lambda labels, k=req: k in labels)

    def check(obj: Body) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return check


def field_selector(selector: str) -> Selector:
    """A predicate for ``fieldSelector``: ``a.b.c=v``, ``==`` and ``!=`` on any dotted field."""
    checks: list[Callable[[Body], bool]] = []
    for req in _split_requirements(selector):
        match = _EQUALITY_REQUIREMENT.match(req)
        if match is None:
            raise k8s_error(400, "BadRequest", f"invalid field selector: {req!r}")
        path, op, value = match.group(1).split("."), match.group(2), match.group(3).strip()

        def get(obj: Body, path: list[str] = path) -> str:
            current: Any = obj
            for part in path:
                current = current.get(part) if isinstance(current, Mapping) else None
            return "" if current is None else str(current)

        if op == "!=":
            checks.append(lambda obj, g=get, v=value: g(obj) != v)
        else:
            checks.append(lambda obj, g=get, v=value: g(obj) == v)
    return lambda obj: all(check(obj) for check in checks)


def request_selector(request: kmock.Request) -> Selector:
    """The combined label, field and name filter of a list or watch request."""
    checks: list[Selector] = []
    if request.params.get("labelSelector"):
        checks.append(label_selector(request.params["labelSelector"]))
    if request.params.get("fieldSelector"):
        checks.append(field_selector(request.params["fieldSelector"]))
    if request.name is not None:  # a watch of a single object: /.../plural/name?watch=true
        checks.append(lambda obj, n=request.name: obj.get("metadata", {}).get("name") == n)
    return lambda obj: all(check(obj) for check in checks)


# --- the emulator -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One change in the watch log: the state after it and the state before it."""

    rv: int
    resource: kmock.resource
    namespace: str | None
    type: str  # ADDED, MODIFIED, DELETED
    object: Body
    old: Body | None


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API-server semantics kopf relies on.

    See the module docstring for what is added and why. Use :meth:`declare` to add
    resources; :data:`DEFAULT_RESOURCES` are declared on construction.

    Use it as kmock documents: ``async with ApiServerEmulator() as emulator,
    kmock.Server(emulator) as server: ...``. Stored objects are in ``emulator.objects``
    (kmock's view with full history), requests in ``list(emulator)``.
    """

    declare_defaults: bool = True
    _rv: int = attrs.field(default=1000, init=False)
    _log: list[LogEntry] = attrs.field(factory=list, init=False)
    _log_base: int = attrs.field(default=0, init=False)  # entries dropped by compact()
    _log_floor: int = attrs.field(default=0, init=False)  # oldest resourceVersion to resume
    _log_changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _watchers: dict[tuple[kmock.resource, str | None], int] = attrs.field(factory=dict, init=False)
    _refusals: set[Refusal] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        # kmock registers list/watch/fetch/create/update/delete fallbacks bound to the
        # _serve_* methods, which are overridden below; PUT is not classified by kmock.
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replace
        # RBAC: before every other fallback (a sub-priority within them), after test reactions
        (self.fallback**1)[self._refused] << self._serve_forbidden
        if self.declare_defaults:
            for decl in DEFAULT_RESOURCES:
                self.declare(decl)

    # --- declarations and introspection ---

    def declare(self, decl: ResourceDecl) -> None:
        """Make a resource discoverable and servable."""
        self.resources[decl.key] = kmock.ResourceInfo(
            kind=decl.kind,
            singular=decl.singular or decl.kind.lower(),
            namespaced=decl.namespaced,
            shortnames=set(decl.shortnames),
            verbs=set(decl.verbs),
            subresources={"status"} if decl.status else set(),
        )

    def deny(
        self, verb: str, resource: str, namespace: str | None = None, *, group: str = ""
    ) -> None:
        """Refuse ``verb`` on ``resource`` (a plural, or ``plural/subresource``) of API
        ``group`` (core by default) in ``namespace`` (``None``: in every namespace), as RBAC
        does when no role grants it: the request gets 403 and a SelfSubjectAccessReview for
        it says ``allowed: false``. Everything not denied is allowed."""
        self._refusals.add((verb, group, resource, namespace))

    def allow(
        self, verb: str, resource: str, namespace: str | None = None, *, group: str = ""
    ) -> None:
        """Undo :meth:`deny` with the same arguments (a role granting it was bound)."""
        self._refusals.discard((verb, group, resource, namespace))

    def refuses(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        """Whether RBAC refuses the request. ``namespace`` ``None`` (or ``""``) asks about
        the cluster scope or every namespace: any refusal of the verb and resource counts."""
        return any(
            (v, g, r) == (verb, group, resource) and ns in {None, namespace or ns}
            for v, g, r, ns in self._refusals
        )

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out."""
        return self._rv

    def watching(self, resource: str, namespace: str | None = None) -> int:
        """How many watch streams are open for a resource (in a namespace or cluster-wide)."""
        return self._watchers.get((kmock.resource(resource), namespace), 0)

    def compact(self) -> None:
        """Forget the change log, as etcd compaction does: older versions get 410 Gone."""
        self._log_base += len(self._log)
        self._log.clear()
        self._log_floor = self._rv
        self._notify()

    @property
    def internal_errors(self) -> list[Exception]:
        """Errors of the emulator itself (bugs), not the Kubernetes errors it answers with."""
        return [e for e in self.errors if not isinstance(e, kmock.KubernetesError)]

    # --- request handling ---

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's ``RawHandler.__call__`` with :func:`parse_request` as the parser."""
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise kmock.KMockError("Too many requests have been served so far.")
            request = await parse_request(raw_request, id=len(self._requests))
            self._requests.append(request)
            try:
                return await self._handle(request)
            except StreamingError as e:
                raw_response = e.args[0]
                if e.__cause__ is not None:
                    raise e.__cause__ from None
                raise
        except Exception as e:
            if not self._errors:
                raise
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """kmock's ``RawHandler._handle`` (the reactions in priority order, the first whose
        view sees the request serves it) with :meth:`_sees` for its membership test.

        kmock's own test, ``request in view``, replays the whole request log through the
        view's filters on every request, so serving gets slower with each request served
        (about 1 s a request after 10,000). It also skips ``KubernetesEmulator._handle``,
        which mutates kmock's store before dispatching: here, the state changes in the
        fallbacks, i.e. only if no test reaction intercepts.
        """
        priorities = [payload.priorities for payload in self._payloads]
        width = max((len(p) for p in priorities), default=0)
        order = sorted(
            range(len(priorities)),
            key=lambda i: tuple(-p for p in priorities[i]) + (0,) * (width - len(priorities[i])),
        )
        for payload in (self._payloads[i] for i in order):
            if payload._disabled.is_set() or not self._sees(payload._source, request):
                continue
            try:
                return await payload(request)
            except kmock.ReactionMismatchError:  # either a mismatch or depleted
                payload._disabled.set()
            except NotImplementedError:  # matched, but nothing to respond with
                pass
        raise NotImplementedError("no reaction matches the request")

    def _sees(self, view: kmock.View, request: kmock.Request) -> bool:
        """Whether ``request`` is in ``view``, as ``request in view`` answers: in constant
        time along chains of filters and priorities (what fallbacks and most test reactions
        are); by kmock's replay for slices, groups, exclusions and streams, whose
        membership depends on the other requests."""
        if view is self:
            return True  # the request was just appended to this root's log
        if type(view) is kmock.Filter:
            return bool(view.criteria(request)) and self._sees(view._source, request)
        if type(view) is kmock.Priority:
            return self._sees(view._source, request)
        return request in view

    async def _serve_version(self, request: kmock.Request) -> Any:
        # kmock 0.8 reports the core group as "/v1"; the API server says "v1".
        result = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            result["groupVersion"] = request.resource.version
        return result

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource not in self.resources:
            raise k8s_error(404, "NotFound", f"the server could not find the resource {resource}")
        return self.resources[resource]

    def _address(self, request: kmock.Request) -> tuple[ObjectKey, kmock.ResourceInfo]:
        info = self._info(request.resource)
        if request.name is None or (info.namespaced and request.namespace is None):
            raise k8s_error(405, "MethodNotAllowed", "the request needs a namespace and a name")
        assert request.resource is not None
        namespace = request.namespace if info.namespaced else None
        return (request.resource, namespace, request.name), info

    def _current(self, key: ObjectKey) -> Body | None:
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    def _existing(self, key: ObjectKey) -> Body:
        body = self._current(key)
        if body is None:
            raise k8s_error(404, "NotFound", f"{key[0].plural} {key[2]!r} not found")
        return body

    @staticmethod
    def _api_version(resource: kmock.resource) -> str:
        return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)

    # --- the change log ---

    def _notify(self) -> None:
        waiter, self._log_changed = self._log_changed, asyncio.Event()
        waiter.set()

    def _commit(self, key: ObjectKey, event_type: str, new: Body, old: Body | None) -> Body:
        """Store a new state (or a deletion), give it a resourceVersion, log it for watchers."""
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        resource, namespace, _ = key
        if event_type == "DELETED":
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].history.append(copy.deepcopy(new))  # re-creation keeps history
        else:
            self.objects[key] = copy.deepcopy(new)
        entry = LogEntry(self._rv, resource, namespace, event_type, copy.deepcopy(new), old)
        self._log.append(entry)
        self._notify()
        return new

    def _update(
        self,
        key: ObjectKey,
        info: kmock.ResourceInfo,
        old: Body,
        patched: Body,
        subresource: str | None,
    ) -> Body:
        """Turn a requested new state into the stored one, with the server's rules."""
        has_status = "status" in info.subresources
        requested_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if requested_rv is not None and requested_rv != old["metadata"].get("resourceVersion"):
            raise k8s_error(
                409,
                "Conflict",
                "the object has been modified; please apply your changes "
                "to the latest version and try again",
            )
        if subresource == "status":
            if not has_status:
                raise k8s_error(404, "NotFound", f"{key[0].plural} has no status subresource")
            new = copy.deepcopy(old)
            new.pop("status", None)
            if patched.get("status") is not None:
                new["status"] = patched["status"]
        elif subresource is None:
            new = patched
            if has_status:  # the main resource ignores status changes
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        else:
            raise k8s_error(404, "NotFound", f"unknown subresource {subresource!r}")

        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise k8s_error(400, "BadRequest", "metadata must be an object")
        for field in IMMUTABLE_METADATA:
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = old.get("apiVersion"), old.get("kind")

        old_finalizers = old["metadata"].get("finalizers") or []
        new_finalizers = meta.get("finalizers") or []
        if old["metadata"].get("deletionTimestamp") and set(new_finalizers) - set(old_finalizers):
            raise k8s_error(
                422,
                "Invalid",
                "metadata.finalizers: Forbidden: no new finalizers can be "
                "added if the object is being deleted",
            )

        def desired(body: Body) -> Body:
            ignored = {"metadata", "status"} if has_status else {"metadata"}
            return {k: v for k, v in body.items() if k not in ignored}

        if desired(new) != desired(old):
            meta["generation"] = int(old["metadata"].get("generation", 0)) + 1

        if new == old:  # a no-op: no new resourceVersion, no watch event
            return old
        new = self._commit(key, "MODIFIED", new, old)
        if meta.get("deletionTimestamp") and not new_finalizers:
            self._commit(key, "DELETED", copy.deepcopy(new), new)
        return new

    # --- RBAC ---

    @staticmethod
    def rbac_verb(request: kmock.Request) -> str | None:
        """The verb RBAC checks a request for (``None`` for discovery and other paths)."""
        if request.resource is None or request.resource.plural is None:
            return None
        if str(getattr(request.method, "value", request.method)).upper() == "PUT":
            return "update"
        if request.action == kmock.action.DELETE and request.name is None:
            return "deletecollection"
        return RBAC_VERBS.get(request.action) if request.action is not None else None

    def _refused(self, request: kmock.Request) -> bool:
        verb = self.rbac_verb(request)
        if verb is None or request.resource is None:
            return False
        resource = str(request.resource.plural)
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        group = str(request.resource.group or "")
        return self.refuses(verb, group, resource, request.namespace)

    async def _serve_forbidden(self, request: kmock.Request) -> Body:
        """The API server's 403 for a request RBAC refuses."""
        assert request.resource is not None
        verb = self.rbac_verb(request)
        plural = str(request.resource.plural)
        resource = f"{plural}/{request.subresource}" if request.subresource else plural
        group = str(request.resource.group or "")
        where = "at the cluster scope"
        if request.namespace:
            where = f'in the namespace "{request.namespace}"'
        subject = f'{plural} "{request.name}"' if request.name else plural
        details: Body = {"group": group, "kind": plural}
        if request.name:
            details["name"] = request.name
        raise kmock.KubernetesError(
            status=403,
            reason="Forbidden",
            message=(
                f'{subject} is forbidden: User "{USER}" cannot {verb} resource "{resource}" '
                f'in API group "{group}" {where}'
            ),
            details=details,
        )

    def _serve_access_review(self, request: kmock.Request) -> kmock.Response:
        """A SelfSubjectAccessReview answered from the refusals (``201`` with the review)."""
        review = request.data
        if not isinstance(review, dict):
            raise k8s_error(400, "BadRequest", "the body must be a JSON object")
        spec = review.get("spec")
        spec = spec if isinstance(spec, dict) else {}
        attributes = spec.get("resourceAttributes")
        if (attributes is None) == (spec.get("nonResourceAttributes") is None):
            raise k8s_error(
                422,
                "Invalid",
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: '
                "spec.resourceAttributes: Invalid value: null: exactly one of "
                "nonResourceAttributes or resourceAttributes must be specified",
            )
        allowed = True
        if isinstance(attributes, dict):
            resource = str(attributes.get("resource") or "")
            if attributes.get("subresource"):
                resource = f"{resource}/{attributes['subresource']}"
            allowed = not self.refuses(
                str(attributes.get("verb") or ""),
                str(attributes.get("group") or ""),
                resource,
                attributes.get("namespace") or None,
            )
        status: Body = {"allowed": allowed}
        if allowed:
            status["reason"] = "allowed by the emulator (no RBAC refusal for this request)"
        answer = {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": copy.deepcopy(spec),
            "status": status,
        }
        return kmock.Response(status=201, payload=answer)

    # --- the verbs (kmock's fallback reactions) ---

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        info = self._info(request.resource)
        assert request.resource is not None
        if info.kind == "SelfSubjectAccessReview":  # answered, never stored
            return self._serve_access_review(request)
        if request.name is not None or request.subresource is not None:
            raise k8s_error(405, "MethodNotAllowed", "POST is served on collections only")
        if not isinstance(request.data, dict):
            raise k8s_error(400, "BadRequest", "the body must be a JSON object")
        body = copy.deepcopy(request.data)
        meta = body.setdefault("metadata", {})
        if info.namespaced:
            namespace = request.namespace
            if namespace is None:
                raise k8s_error(
                    405,
                    "MethodNotAllowed",
                    "namespaced objects are created in /namespaces/NAMESPACE/...",
                )
            if meta.get("namespace") not in {None, namespace}:
                raise k8s_error(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                )
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)

        name = meta.get("name")
        if not name and meta.get("generateName"):
            while True:
                suffix = "".join(random.choices(NAME_SUFFIX_ALPHABET, k=5))
                name = f"{meta['generateName']}{suffix}"
                if self._current((request.resource, namespace, name)) is None:
                    break
        if not name:
            raise k8s_error(
                422, "Invalid", "metadata.name: Required value: name or generateName is required"
            )
        key = (request.resource, namespace, name)
        if self._current(key) is not None:
            raise k8s_error(
                409, "AlreadyExists", f"{request.resource.plural} {name!r} already exists"
            )

        body.setdefault("apiVersion", self._api_version(request.resource))
        body.setdefault("kind", info.kind)
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta.update(
            name=name, uid=str(uuid.uuid4()), creationTimestamp=now_timestamp(), generation=1
        )
        if "status" in info.subresources:
            body.pop("status", None)
        return kmock.Response(status=201, payload=self._commit(key, "ADDED", body, None))

    async def _serve_fetch(self, request: kmock.Request) -> Body:
        key, _ = self._address(request)
        if request.subresource not in {None, "status"}:
            raise k8s_error(404, "NotFound", f"unknown subresource {request.subresource!r}")
        return self._existing(key)

    async def _serve_update(self, request: kmock.Request) -> Body:
        key, info = self._address(request)
        old = self._existing(key)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == JSON_PATCH:
            if not isinstance(request.data, list):
                raise k8s_error(400, "BadRequest", "a JSON-patch must be a list of operations")
            try:
                patched = jsonpatch.apply_patch(old, request.data, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise k8s_error(422, "Invalid", f"the JSON-patch test failed: {e}") from None
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise k8s_error(422, "Invalid", f"the JSON-patch cannot be applied: {e}") from None
        elif content_type in MERGE_PATCHES:
            if not isinstance(request.data, dict):
                raise k8s_error(400, "BadRequest", "a merge-patch must be a JSON object")
            patched = merge_patch(old, request.data)
        else:
            raise k8s_error(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")
        if not isinstance(patched, dict):
            raise k8s_error(422, "Invalid", "the patched object is not an object")
        return self._update(key, info, old, patched, request.subresource)

    async def _serve_replace(self, request: kmock.Request) -> Body:
        key, info = self._address(request)
        old = self._existing(key)
        if not isinstance(request.data, dict):
            raise k8s_error(400, "BadRequest", "the body must be a JSON object")
        return self._update(key, info, old, copy.deepcopy(request.data), request.subresource)

    async def _serve_delete(self, request: kmock.Request) -> Body:
        key, _ = self._address(request)
        old = self._existing(key)
        if not old["metadata"].get("finalizers"):
            return self._commit(key, "DELETED", copy.deepcopy(old), old)
        if old["metadata"].get("deletionTimestamp"):
            return old
        new = copy.deepcopy(old)
        new["metadata"].update(deletionTimestamp=now_timestamp(), deletionGracePeriodSeconds=0)
        return self._commit(key, "MODIFIED", new, old)

    def _matching(self, request: kmock.Request) -> Iterable[Body]:
        select = request_selector(request)
        for (resource, namespace, _), obj in list(self.objects.items()):
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            body = copy.deepcopy(obj.raw)
            if select(body):
                yield body

    async def _serve_list(self, request: kmock.Request) -> Body:
        info = self._info(request.resource)
        assert request.resource is not None
        return {
            "apiVersion": self._api_version(request.resource),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._rv), "continue": ""},
            "items": list(self._matching(request)),
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        self._info(request.resource)
        assert request.resource is not None
        select = request_selector(request)
        since = request.params.get("resourceVersion") or "0"
        initial = request.params.get("sendInitialEvents") == "true"
        timeout = request.params.get("timeoutSeconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout) if timeout else None

        yield b""  # send the headers now: kmock starts the response on the first chunk
        watcher_key = (request.resource, request.namespace)
        self._watchers[watcher_key] = self._watchers.get(watcher_key, 0) + 1
        try:
            if since == "0" or initial:
                position = self._log_base + len(self._log)
                for body in self._matching(request):
                    yield {"type": "ADDED", "object": body}
                if initial:
                    yield {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": self.resources[request.resource].kind,
                            "apiVersion": self._api_version(request.resource),
                            "metadata": {
                                "resourceVersion": str(self._rv),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    }
            else:
                try:
                    rv = int(since)
                except ValueError:
                    raise k8s_error(400, "BadRequest", f"bad resourceVersion {since!r}") from None
                if rv < self._log_floor:
                    yield self._gone(rv)
                    return
                rvs = [entry.rv for entry in self._log]
                position = self._log_base + bisect.bisect_right(rvs, rv)

            while True:
                if position < self._log_base:  # compacted while we were streaming
                    yield self._gone(self._log_floor - 1)
                    return
                while position < self._log_base + len(self._log):
                    entry = self._log[position - self._log_base]
                    position += 1
                    event = self._watch_event(request, select, entry)
                    if event is not None:
                        yield event
                    if position < self._log_base:
                        break
                else:
                    waiter = self._log_changed
                    remaining = None if deadline is None else deadline - loop.time()
                    if remaining is not None and remaining <= 0:
                        return
                    try:
                        await asyncio.wait_for(waiter.wait(), timeout=remaining)
                    except asyncio.TimeoutError:
                        return
        finally:
            self._watchers[watcher_key] -= 1

    @staticmethod
    def _gone(rv: int) -> Body:
        return {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "reason": "Expired",
                "code": 410,
                "message": f"too old resource version: {rv} (compacted)",
            },
        }

    @staticmethod
    def _watch_event(request: kmock.Request, select: Selector, entry: LogEntry) -> Body | None:
        """The event a watcher sees for a change, given its resource, namespace and selectors."""
        if entry.resource != request.resource:
            return None
        if request.namespace is not None and entry.namespace != request.namespace:
            return None
        now_in = entry.type != "DELETED" and select(entry.object)
        was_in = entry.old is not None and select(entry.old)
        if entry.type == "DELETED":
            return {"type": "DELETED", "object": entry.object} if was_in else None
        if now_in and (was_in or entry.type == "ADDED"):
            return {"type": entry.type, "object": entry.object}
        if now_in:  # modified into the selection
            return {"type": "ADDED", "object": entry.object}
        if was_in:  # modified out of the selection
            return {"type": "DELETED", "object": entry.object}
        return None
