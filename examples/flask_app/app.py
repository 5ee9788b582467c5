"""A Flask app that enqueues a kiq job with a model argument.

    FLASK_APP=app.py flask run          # then: curl -X POST localhost:5000/signup -d email=a@b.c
    kiq start -r jobs -q mailers        # in another terminal, from this directory
"""

from __future__ import annotations

from flask import Flask, request
from jobs import WelcomeJob
from models import Session, User

import kiq

app = Flask(__name__)
kiq.configure()  # KIQ_REDIS_URL, else REDIS_URL, else redis://127.0.0.1:6379/0


@app.post("/signup")
def signup() -> dict[str, object]:
    user = User(email=request.form["email"])
    Session.add(user)
    Session.commit()
    job = WelcomeJob.perform_later(user, greeting="Hello")
    return {"user": user.id, "jid": job.jid}


@app.get("/users/<int:user_id>")
def show(user_id: int) -> dict[str, object]:
    user = Session.get(User, user_id)
    Session.remove()
    return {"email": user.email, "welcomed": user.welcomed} if user else {}
