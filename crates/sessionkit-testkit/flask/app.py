"""A small Flask app on Flask-Session 0.8 and Flask-Login, for sessionkit's interop tests.

Started by sessionkit_testkit::flask::FlaskApp with the venv that scripts/test creates. It binds
127.0.0.1 on a free port and prints the port on its first line of output.

Environment: FLASK_STORE (redis | filesystem), REDIS_URL, FILE_DIR, SECRET_KEY, USE_SIGNER (1/0),
KEY_PREFIX.
"""
import logging
import os
import sys

from flask import Flask, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_session import Session
from werkzeug.serving import make_server

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
app.config["SESSION_USE_SIGNER"] = os.environ.get("USE_SIGNER", "1") == "1"
app.config["SESSION_KEY_PREFIX"] = os.environ.get("KEY_PREFIX", "session:")
store = os.environ.get("FLASK_STORE", "redis")
if store == "redis":
    import redis

    app.config["SESSION_TYPE"] = "redis"
    app.config["SESSION_REDIS"] = redis.Redis.from_url(os.environ["REDIS_URL"])
elif store == "filesystem":
    from cachelib.file import FileSystemCache

    app.config["SESSION_TYPE"] = "cachelib"
    app.config["SESSION_CACHELIB"] = FileSystemCache(cache_dir=os.environ["FILE_DIR"], threshold=0)
else:
    sys.exit(f"unknown FLASK_STORE {store!r}")
Session(app)

login_manager = LoginManager(app)


class User(UserMixin):
    def __init__(self, name):
        self.id = name


@login_manager.user_loader
def load_user(user_id):
    return User(user_id)


@app.post("/login")
def login():
    login_user(User(request.args["user"]))
    session["greeting"] = "hello from flask"
    return "ok"


@app.post("/logout")
def logout():
    logout_user()
    return "ok"


@app.get("/whoami")
def whoami():
    return current_user.get_id() if current_user.is_authenticated else "anonymous"


@app.get("/get")
def get():
    return repr(session.get(request.args["key"]))


@app.post("/set")
def set_():
    session[request.args["key"]] = request.args["value"]
    return "ok"


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.port, flush=True)
    server.serve_forever()
