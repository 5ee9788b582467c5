"""Django in a kiq worker: list this module in the workers' ``require``.

    require: [kiq.contrib.django.setup]      # DJANGO_SETTINGS_MODULE in the environment

It sets Django up (``django.setup()``) in the generation that imports the app, before it
forks its workers, then imports the ``tasks`` module of every installed app that has one, as
Django's admin finds ``admin`` modules: a worker runs only tasks loaded at this point (kiq
never imports a module a payload names). Tasks defined elsewhere: list their modules in
``require`` after this one.
"""

from __future__ import annotations

import os

import django
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

if not os.environ.get("DJANGO_SETTINGS_MODULE"):
    raise ImproperlyConfigured("kiq.contrib.django.setup: set DJANGO_SETTINGS_MODULE in the workers' "
                               "environment")

django.setup()
autodiscover_modules("tasks")

from kiq.contrib.django import job  # noqa: E402  the job class and its results member, registered

__all__ = ["job"]
