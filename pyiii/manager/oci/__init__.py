"""OCI image workers (spec/cli.md §9.6): references, pulling from a distribution registry,
unpacking the root filesystem into the shared cache, and running it in a namespace sandbox.

Modules: :mod:`.reference` parses ``[host/]repo[:tag][@digest]``; :mod:`.client` speaks the
distribution API with anonymous Bearer tokens; :mod:`.manifests` narrows an index to this
machine; :mod:`.layers` applies layers with whiteouts; :mod:`.store` ties them into a cached
root; :mod:`.declare` is the ``iii worker add <image>`` half; :mod:`.run` builds the sandbox.
"""
