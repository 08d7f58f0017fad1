"""Validation and defaults for the specs users write: ServiceSpec, NodeSpec, SwarmSpec.

Shapes are the Docker Engine API's (MOBY: api/swagger.yaml `ServiceSpec`, `NodeSpec`,
`SwarmSpec`); defaults are swarmkit's (SK: api/defaults/service.go; SWARM-FACTS 1.5, 1.6).
Errors are :class:`SpecError` with the message swarmkit/moby would give; the API turns them
into HTTP 400 (``rpc error: code = InvalidArgument desc = <message>`` where swarmkit adds it).

The stored service spec is what the user sent (validated, with ``Mode`` and ``Name`` filled);
:func:`service_spec_with_defaults` adds the defaults for ``?insertDefaults=true`` and for the
task specs the orchestrator writes.

The package, by responsibility: :mod:`.common` (units, limits, :class:`SpecError`, type checks,
names), :mod:`.schema` (case-insensitive key canonicalisation), :mod:`.container` (TaskSpec /
ContainerSpec validation and placement constraints), :mod:`.service` (ServiceSpec validation and
defaults), :mod:`.swarm` (NodeSpec and SwarmSpec). Import from ``manager.specs``.
"""

from __future__ import annotations

from manager.specs.common import (
    INT64_MAX,
    INT64_MIN,
    MAX_REPLICAS,
    SECOND,
    UINT64_MAX,
    SpecError,
    validate_name,
    validate_network_attachments,
)
from manager.specs.container import (
    MIN_MEMORY_BYTES,
    MIN_NANO_CPUS,
    SPREAD_PREFIXES,
    parse_constraint,
    validate_placement,
    validate_task_spec,
)
from manager.specs.schema import (
    MAP,
    NETWORK_CREATE_SCHEMA,
    NODE_SPEC_SCHEMA,
    SERVICE_SPEC_SCHEMA,
    SWARM_SPEC_SCHEMA,
    canonicalize_keys,
)
from manager.specs.service import (
    DEFAULT_RESTART_POLICY,
    DEFAULT_ROLLBACK_CONFIG,
    DEFAULT_STOP_GRACE_PERIOD,
    DEFAULT_UPDATE_CONFIG,
    service_spec_with_defaults,
    task_spec_with_defaults,
    validate_endpoint_spec,
    validate_service_spec,
)
from manager.specs.swarm import default_swarm_spec, validate_node_spec, validate_swarm_spec

__all__ = [
    "validate_endpoint_spec",
    "SpecError",
    "validate_service_spec",
    "service_spec_with_defaults",
    "task_spec_with_defaults",
    "validate_task_spec",
    "validate_node_spec",
    "validate_swarm_spec",
    "default_swarm_spec",
    "parse_constraint",
    "validate_placement",
    "SPREAD_PREFIXES",
    "MIN_NANO_CPUS",
    "MIN_MEMORY_BYTES",
    "validate_name",
    "canonicalize_keys",
    "SERVICE_SPEC_SCHEMA",
    "NODE_SPEC_SCHEMA",
    "SWARM_SPEC_SCHEMA",
    "NETWORK_CREATE_SCHEMA",
    "MAP",
    "SECOND",
    "MAX_REPLICAS",
    "INT64_MIN",
    "INT64_MAX",
    "UINT64_MAX",
    "validate_network_attachments",
    "DEFAULT_RESTART_POLICY",
    "DEFAULT_STOP_GRACE_PERIOD",
    "DEFAULT_UPDATE_CONFIG",
    "DEFAULT_ROLLBACK_CONFIG",
]
