"""A Flask app that answers at once and leaves the slow work to rqkit's workers: thumbnails of uploaded
images, a welcome email on sign-up, and the word counts they keep in Redis. It reaches the toolkit
through rqkit.Toolkit alone, so none of the toolkit's own packages is imported into this process.

Run from the toolkit's folder: flask --app examples/flask_app/app.py run   (README.md beside this file)
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    abort,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)

from rqkit import Refused, Toolkit, Unavailable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
UNFINISHED = ("queued", "started", "deferred", "scheduled")

app = Flask(__name__)
app.config.update(
    SECRET_KEY="dev only: set FLASK_SECRET_KEY", MAX_CONTENT_LENGTH=20 * 2**20, SITE_NAME="Example shop"
)
app.config.from_prefixed_env()  # FLASK_SECRET_KEY and any other FLASK_* setting

toolkit = Toolkit()  # a gateway process, started once, shared by every request
locations = toolkit.locations()
if any(place.startswith("s3://") for place in locations.values()):
    raise RuntimeError(f"this example keeps uploads and thumbnails in folders, not buckets: {locations}")
MEDIA_ROOT, THUMBNAILS_ROOT = Path(locations["media_root"]), Path(locations["thumbnails_root"])


@app.before_request
def check_csrf_token() -> None:
    """Every form carries the session's token (Flask has no CSRF protection of its own)."""
    if request.method == "POST":
        expected, sent = session.get("csrf_token", ""), request.form.get("csrf_token", "")
        if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
            abort(400, "This form has expired: reload the page and send it again.")


@app.context_processor
def csrf_token() -> dict[str, str]:
    return {"csrf_token": session.setdefault("csrf_token", secrets.token_urlsafe(32))}


@app.errorhandler(Unavailable)
def toolkit_unavailable(error: Unavailable) -> tuple[str, int]:
    app.logger.warning("rqkit: %s", error)
    return render_template("unavailable.html"), 503


@app.get("/")
def home() -> str:
    return render_template("home.html", counts=toolkit.word_counts())


@app.route("/upload", methods=["GET", "POST"])
def upload() -> Any:
    if request.method == "GET":
        return render_template("upload.html")
    picture = request.files.get("picture")
    suffix = Path(picture.filename or "").suffix.lower() if picture else ""
    if picture is None or suffix not in IMAGE_SUFFIXES:
        return render_template("upload.html", error="Choose a JPEG, PNG, GIF or WebP image."), 400
    relative = f"uploads/{uuid.uuid4().hex}{suffix}"  # never the client's name
    saved = MEDIA_ROOT / relative
    saved.parent.mkdir(exist_ok=True)
    with saved.open("xb") as file:
        picture.save(file)
    try:
        job = toolkit.enqueue("thumbnail", relative)
    except Refused as refusal:
        saved.unlink()
        return render_template("upload.html", error=str(refusal)), 400
    return redirect(url_for("job", job_id=job["id"]), 303)


@app.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    found = toolkit.job(job_id)
    if found is None or found["job"] != "thumbnail":
        abort(404)
    return render_template(
        "job.html", job=found, unfinished=found["status"] in UNFINISHED, thumbnails=thumbnails(found)
    )


def thumbnails(job: dict[str, Any]) -> list[tuple[int, str]]:
    """(size, path under the thumbnails root) of each thumbnail a finished job wrote or found up to date."""
    result = job["result"] or {}
    made = {**result.get("skipped", {}), **result.get("written", {})}
    return sorted(
        (int(size), Path(path).relative_to(THUMBNAILS_ROOT).as_posix())
        for size, path in made.items()
        if Path(path).is_relative_to(THUMBNAILS_ROOT)
    )


@app.get("/thumbnails/<path:name>")
def thumbnail_file(name: str) -> Any:
    return send_from_directory(THUMBNAILS_ROOT, name)  # only files under it


@app.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    if request.method == "GET":
        return render_template("signup.html")
    name, address = request.form.get("name", "").strip(), request.form.get("email", "").strip()
    context = {"name": name, "site": app.config["SITE_NAME"], "login_url": url_for("home", _external=True)}
    try:
        toolkit.enqueue(
            "email",
            to=address,
            template="welcome",
            context=context,
            idempotency_key=f"welcome:{address.lower()}",  # sent once, however often the form is sent
        )
    except Refused as refusal:
        return render_template("signup.html", error=str(refusal), name=name, email=address), 400
    flash(f"Thanks for signing up! A welcome email is on its way to {address}.")
    return redirect(url_for("signup"), 303)
