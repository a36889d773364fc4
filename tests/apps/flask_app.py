"""A small Flask app, served by a test with `prefork serve --wsgi apps.flask_app:app`."""

import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def hello():
    return jsonify(message="Hello, World!", pid=os.getpid())


@app.post("/items")
def create_item():
    return jsonify(received=request.get_json(), script_root=request.script_root), 201


@app.get("/stream")
def stream():
    return app.response_class((f"{n}\n" for n in range(3)), mimetype="text/plain")
