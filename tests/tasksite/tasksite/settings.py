"""Settings of the test project: kiq's backend on the test's Redis (``KIQ_REDIS_URL``)."""

import importlib.util
import os

SECRET_KEY = "kiq-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
ROOT_URLCONF = "tasksite.urls"
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
BACKPORT = importlib.util.find_spec("django.tasks") is None  # Django before 6: the django-tasks package
INSTALLED_APPS = ["taskapp", *(["django_tasks"] if BACKPORT else [])]

REDIS_URL = os.environ["KIQ_REDIS_URL"]
TASKS = {
    "default": {
        "BACKEND": "kiq.contrib.django.KiqBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"redis_url": REDIS_URL, "result_ttl": 600},
    },
    "retrying": {
        "BACKEND": "kiq.contrib.django.KiqBackend",
        "OPTIONS": {"redis_url": REDIS_URL, "retry": 1},
    },
}
