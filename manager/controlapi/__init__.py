"""The control API: typed calls on the cluster state beneath the HTTP layer (swarmkit's
``controlapi`` is the model). One module per resource (:mod:`.cluster`, :mod:`.nodes`,
:mod:`.services`, :mod:`.tasks`, :mod:`.networks`); each call validates its arguments (:mod:`manager.specs`),
runs at most one store transaction and returns Docker-shaped dicts, or raises one of
:mod:`.errors` (each carries the Docker HTTP status it maps to). Writes run on the Raft leader:
:class:`.control.Control` runs them here or sends them to the leader as a ``control.call``
message over 2377 (docs/contracts.md, "Control API")."""
