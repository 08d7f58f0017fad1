"""shoal-oci: Shoal's own OCI runtime (a runc-compatible subset), written in Python over libc.

Entry point: ``agent_runtime.oci.cli:main``. The container setup is in ``runtime``, cgroups in
``cgroups``, system call bindings in ``libc``.
"""
