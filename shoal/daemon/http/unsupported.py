"""The Docker Engine API v1.41 routes Shoal does not serve yet: each answers HTTP 501 with Docker's
JSON error body ``{"message": "<feature> are not supported by Shoal yet: <what to use instead>"}``,
so that a user of the docker CLI can tell a missing feature from a bug. Paths that Docker itself
does not have stay 404 ``page not found`` (the application's middleware renders that), as Docker's.

:func:`add_routes` registers the table below, plain and under ``/v{version}``, after the routes
Shoal serves, and skips an entry whose method and path Shoal serves. aiohttp tries the routes with
the longest static prefix first and, among those, in registration order: a served route wins as
long as no entry is more specific than it (a static path where Shoal serves a pattern);
tests/unit/test_unsupported_routes.py resolves a request of every served route to check that. When
Shoal starts serving a route, remove its entry here.

Docs followed: Docker Engine API v1.41 (the route list of moby's ``api/server/router/*``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from shoal.daemon.errors import api_error

__all__ = ["UNSUPPORTED", "Unsupported", "add_routes", "message"]


@dataclass(frozen=True)
class Unsupported:
    """One feature Shoal lacks: ``feature`` names it in the message (``verb`` agrees with it),
    ``instead`` says what to use instead ("" when there is nothing), ``routes`` are its
    ``(method, path)`` pairs (aiohttp path patterns, as Docker's router has them)."""

    feature: str
    instead: str
    routes: tuple[tuple[str, str], ...]
    verb: str = "are"


_AS_SERVICE = "run it as a service (docker service create …); docker service ps SERVICE lists its tasks"
_NETWORKS = ("a service's tasks join the overlay networks of its spec (docker service create "
             "--network NAME); each node has one local bridge network")

UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("containers", _AS_SERVICE, (
        ("GET", "/containers/json"), ("POST", "/containers/create"),
        ("GET", "/containers/{name:.*}/json"), ("GET", "/containers/{name:.*}/top"),
        ("GET", "/containers/{name:.*}/changes"), ("POST", "/containers/{name:.*}/start"),
        ("POST", "/containers/{name:.*}/stop"), ("POST", "/containers/{name:.*}/restart"),
        ("POST", "/containers/{name:.*}/kill"), ("POST", "/containers/{name:.*}/update"),
        ("POST", "/containers/{name:.*}/rename"), ("POST", "/containers/{name:.*}/pause"),
        ("POST", "/containers/{name:.*}/unpause"), ("POST", "/containers/{name:.*}/resize"),
        ("POST", "/containers/{name:.*}/attach"), ("GET", "/containers/{name:.*}/attach/ws"),
        ("POST", "/containers/{name:.*}/wait"), ("DELETE", "/containers/{name:.*}"),
        ("POST", "/containers/prune"), ("POST", "/commit"),
    )),
    Unsupported("container logs", "a service's logs are served: docker service logs SERVICE", (
        ("GET", "/containers/{name:.*}/logs"),
    )),
    Unsupported("container stats", "", (("GET", "/containers/{name:.*}/stats"),)),
    Unsupported("copying files from and to containers (docker cp, docker export)", "", (
        ("HEAD", "/containers/{name:.*}/archive"), ("GET", "/containers/{name:.*}/archive"),
        ("PUT", "/containers/{name:.*}/archive"), ("GET", "/containers/{name:.*}/export"),
    ), verb="is"),
    Unsupported("exec", "", (
        ("POST", "/containers/{name:.*}/exec"), ("POST", "/exec/{id:.*}/start"),
        ("POST", "/exec/{id:.*}/resize"), ("GET", "/exec/{id:.*}/json"),
    ), verb="is"),
    Unsupported("volumes", "mount a host directory or a tmpfs into a service (docker service create "
                           "--mount type=bind,source=/host/dir,target=/dir or --mount type=tmpfs,target=/dir)", (
        ("GET", "/volumes"), ("POST", "/volumes/create"), ("GET", "/volumes/{name:.*}"),
        ("DELETE", "/volumes/{name:.*}"), ("POST", "/volumes/prune"),
    )),
    Unsupported("secrets", "", (
        ("GET", "/secrets"), ("POST", "/secrets/create"), ("GET", "/secrets/{id}"),
        ("DELETE", "/secrets/{id}"), ("POST", "/secrets/{id}/update"),
    )),
    Unsupported("configs", "", (
        ("GET", "/configs"), ("POST", "/configs/create"), ("GET", "/configs/{id}"),
        ("DELETE", "/configs/{id}"), ("POST", "/configs/{id}/update"),
    )),
    Unsupported("plugins", "", (
        ("GET", "/plugins"), ("GET", "/plugins/privileges"), ("POST", "/plugins/pull"),
        ("POST", "/plugins/create"), ("GET", "/plugins/{name:.*}/json"),
        ("DELETE", "/plugins/{name:.*}"), ("POST", "/plugins/{name:.*}/enable"),
        ("POST", "/plugins/{name:.*}/disable"), ("POST", "/plugins/{name:.*}/upgrade"),
        ("POST", "/plugins/{name:.*}/push"), ("POST", "/plugins/{name:.*}/set"),
    )),
    Unsupported("disk usage (docker system df)", "docker image ls lists the images with their sizes", (
        ("GET", "/system/df"),
    ), verb="is"),
    Unsupported("building images", "build it with another tool, then push it to a registry the nodes "
                                   "pull from, or docker load it", (
        ("POST", "/build"), ("POST", "/build/prune"), ("POST", "/build/cancel"),
        ("POST", "/session"), ("POST", "/grpc"),
    ), verb="is"),
    Unsupported("registry login (docker login)", "", (("POST", "/auth"),), verb="is"),
    Unsupported("image history", "docker image inspect IMAGE shows its layers", (
        ("GET", "/images/{name:.*}/history"),
    ), verb="is"),
    Unsupported("pushing images", "", (("POST", "/images/{name:.*}/push"),), verb="is"),
    Unsupported("tagging images", "", (("POST", "/images/{name:.*}/tag"),), verb="is"),
    Unsupported("removing images", "", (
        ("DELETE", "/images/{name:.*}"), ("POST", "/images/prune"),
    ), verb="is"),
    Unsupported("searching images", "", (("GET", "/images/search"),), verb="is"),
    Unsupported("saving images (docker image save)", "", (
        ("GET", "/images/{name:.*}/get"), ("GET", "/images/get"),
    ), verb="is"),
    Unsupported("connecting, disconnecting and pruning networks", _NETWORKS, (
        ("POST", "/networks/{id:.*}/connect"),
        ("POST", "/networks/{id:.*}/disconnect"), ("POST", "/networks/prune"),
    ), verb="is"),
    Unsupported("swarm autolock (docker swarm unlock, unlock-key)", "", (
        ("GET", "/swarm/unlockkey"), ("POST", "/swarm/unlock"),
    ), verb="is"),
)
"""The table: every Docker Engine API v1.41 route Shoal does not serve yet, by feature."""


def message(item: Unsupported) -> str:
    """The 501 message of ``item``: ``<feature> are not supported by Shoal yet[: <instead>]``."""
    text = f"{item.feature} {item.verb} not supported by Shoal yet"
    return f"{text}: {item.instead}" if item.instead else text


def _handler(text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def not_implemented(request: web.Request) -> web.Response:
        return api_error(501, text)
    return not_implemented


def add_routes(app: web.Application) -> None:
    """Register the 501 routes of :data:`UNSUPPORTED` on ``app``, plain and under ``/v{version}``.
    Call it after the served routes; a ``(method, path)`` already registered is left as it is."""
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    for item in UNSUPPORTED:
        handler = _handler(message(item))
        for method, path in item.routes:
            for full in (path, r"/v{version:[0-9.]+}" + path):
                if (method, _canonical(full)) not in served:
                    app.router.add_route(method, full, handler)


def _canonical(path: str) -> str:
    """aiohttp's canonical form of a path pattern: ``{name:.*}`` → ``{name}``."""
    out, i = [], 0
    while i < len(path):
        j = path.find("{", i)
        if j < 0:
            out.append(path[i:])
            break
        k = path.index("}", j)
        out.append(path[i:j] + "{" + path[j + 1:k].split(":", 1)[0] + "}")
        i = k + 1
    return "".join(out)
