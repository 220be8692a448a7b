"""The service: the job table and its operations (:mod:`.manager`), jobs and their
one state machine (:mod:`.jobs`), slots and the queue, the event hub without Flask
(:mod:`.events`), listings, metrics, logs, observers, signals and deduplication.
Imports the engine and the store, never the server."""
