"""The state directory: paths, the lock, the registry, sidecars, partial files,
file names and the safe file operations under them. Imports nothing of ours but
the shared kernel."""
