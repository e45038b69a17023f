"""Storage adapters behind small interfaces: ``memory`` and ``sqlite`` (embedded default)."""
