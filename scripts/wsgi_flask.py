"""A small Flask app for scripts/bench.py's wsgi-flask workloads: GET / answers {"message": "Hello, World!"}.

The same app under every server (prefork --wsgi, gunicorn, uWSGI), so the
figures show what a framework's own cost per request leaves of each server's
lead over the bare scripts/wsgi_hello.py.
"""

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def hello():
    return jsonify(message="Hello, World!")
