"""What the tests build on and are not tests themselves: the local HTTP origins
(:mod:`.origin`, :mod:`.hub`), the real servers (:mod:`.servers` for gunicorn,
:mod:`.nginx`, :mod:`.webservers`, :mod:`.cache`, :mod:`.browser`), the event-stream
client (:mod:`.sse`), the app under test (:mod:`.app`), the state directory's files
(:mod:`.helpers`) and the Debian packages a test needs (:mod:`.debian`)."""
