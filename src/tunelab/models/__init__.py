"""Models: resolving a spec to files (resolve), loading with adapters (load), merging (export)."""
