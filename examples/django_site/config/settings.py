"""Settings of the example Django project: no database, sessions or static files; messages in a signed
cookie; CSRF checked by Django's middleware."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-dev-only: set DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["django.contrib.messages", "uploads"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "uploads.middleware.ToolkitUnavailable",
]
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.contrib.messages.context_processors.messages"]},
    }
]
DATABASES: dict[str, dict[str, str]] = {}
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"
TIME_ZONE = "UTC"
USE_TZ = True

MAX_UPLOAD_BYTES = 20 * 2**20
SITE_NAME = "Example shop"
