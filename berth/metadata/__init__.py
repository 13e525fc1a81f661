"""The metadata layer: namespaced records over the shared content store and snapshotters."""
