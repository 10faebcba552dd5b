"""The pages: the cached word counts, an upload that queues its thumbnails and answers at once, the job's
progress and its thumbnails, and a sign-up that queues the welcome email. The toolkit is reached through
rqkit.Toolkit alone: this project's `config` is its own."""

import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse

from rqkit import Refused, Toolkit

from .forms import SignupForm, UploadForm

UNFINISHED = ("queued", "started", "deferred", "scheduled")

toolkit = Toolkit()  # a gateway process, started once, shared by every request
locations = toolkit.locations()
if any(place.startswith("s3://") for place in locations.values()):
    raise RuntimeError(f"this example keeps uploads and thumbnails in folders, not buckets: {locations}")
MEDIA_ROOT, THUMBNAILS_ROOT = Path(locations["media_root"]), Path(locations["thumbnails_root"])


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "uploads/home.html", {"counts": toolkit.word_counts()})


def upload(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    if form.is_valid():
        picture = form.cleaned_data["picture"]
        relative = f"uploads/{uuid.uuid4().hex}{Path(picture.name).suffix.lower()}"  # never the client's name
        saved = MEDIA_ROOT / relative
        saved.parent.mkdir(exist_ok=True)
        with saved.open("xb") as file:
            for chunk in picture.chunks():
                file.write(chunk)
        try:
            job = toolkit.enqueue("thumbnail", relative)
        except Refused as refusal:
            saved.unlink()
            form.add_error(None, str(refusal))
        else:
            return HttpResponseRedirect(reverse("job", args=[job["id"]]), status=303)
    return render(request, "uploads/upload.html", {"form": form}, status=400 if form.errors else 200)


def job(request: HttpRequest, job_id: str) -> HttpResponse:
    found = toolkit.job(job_id)
    if found is None or found["job"] != "thumbnail":
        raise Http404("no such thumbnail job")
    context = {"job": found, "unfinished": found["status"] in UNFINISHED, "thumbnails": thumbnails(found)}
    return render(request, "uploads/job.html", context)


def thumbnails(job: dict[str, Any]) -> list[tuple[int, str]]:
    """(size, path under the thumbnails root) of each thumbnail a finished job wrote or found up to date."""
    result = job["result"] or {}
    made = {**result.get("skipped", {}), **result.get("written", {})}
    return sorted(
        (int(size), Path(path).relative_to(THUMBNAILS_ROOT).as_posix())
        for size, path in made.items()
        if Path(path).is_relative_to(THUMBNAILS_ROOT)
    )


def thumbnail_file(request: HttpRequest, name: str) -> FileResponse:
    file = (THUMBNAILS_ROOT / name).resolve()
    if not file.is_relative_to(THUMBNAILS_ROOT) or not file.is_file():  # only files under it
        raise Http404("no such thumbnail")
    return FileResponse(file.open("rb"))


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if form.is_valid():
        name, address = form.cleaned_data["name"], form.cleaned_data["email"]
        context = {"name": name, "site": settings.SITE_NAME, "login_url": request.build_absolute_uri("/")}
        try:
            toolkit.enqueue(
                "email",
                to=address,
                template="welcome",
                context=context,
                idempotency_key=f"welcome:{address.lower()}",  # sent once, however often the form is sent
            )
        except Refused as refusal:
            form.add_error("email", str(refusal))
        else:
            messages.success(request, f"Thanks for signing up! A welcome email is on its way to {address}.")
            return HttpResponseRedirect(reverse("signup"), status=303)
    return render(request, "uploads/signup.html", {"form": form}, status=400 if form.errors else 200)
