"""Storage adapters behind small interfaces: ``memory``, ``sqlite`` (embedded default) and ``redis`` (shared by several engines)."""
