"""The project's tools that are not tests: the benchmark (``make bench``,
:mod:`tools.bench`), mutation testing (``make mutation``, :mod:`tools.mutation`)
and fuzzing (``make fuzz``, :mod:`tools.fuzz`). They run from the repository's
root (``python -m tools.NAME``) and build on the tests' local servers
(:mod:`tests.support`)."""
