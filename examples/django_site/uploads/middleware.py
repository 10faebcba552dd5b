import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from rqkit import Unavailable

logger = logging.getLogger(__name__)


class ToolkitUnavailable:
    """A page that says to try again (503) when Redis or the toolkit's gateway can't be reached."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Unavailable):
            logger.warning("rqkit: %s", exception)
            return render(request, "uploads/unavailable.html", status=503)
        return None
