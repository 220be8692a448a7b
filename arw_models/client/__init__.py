"""The command line (:mod:`.cli`), its HTTP client (:mod:`.remote`) and its display
(:mod:`.display`). Talks to a running service over HTTP only: imports nothing of the
server, the service or the engine, and never Flask."""
