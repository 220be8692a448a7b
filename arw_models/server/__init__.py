"""Everything Flask: the app factory and the extension (:mod:`.app`), the blueprint
(:mod:`.api`), the event stream (:mod:`.stream`), CORS, the web page, the OpenAPI
document, the one table from domain error to HTTP status (:mod:`.problems`) and
gunicorn's configuration. May import every layer below it."""
