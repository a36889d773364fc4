"""The HTTP hello benchmark as a WSGI app, for gunicorn: 200 "Hello, World!" (13 bytes)."""

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
