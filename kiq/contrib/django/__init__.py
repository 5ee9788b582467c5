"""kiq as a backend of Django's tasks framework: ``"BACKEND": "kiq.contrib.django.KiqBackend"``
in ``TASKS``, and ``kiq.contrib.django.setup`` in the workers' ``require`` (docs/django.md).

Works with Django 6's ``django.tasks`` and with the ``django-tasks`` backport (``django_tasks``)
on Django 4.2 to 5.2 (kiq.contrib.django.framework picks the one installed).
"""

from __future__ import annotations

from kiq.contrib.django.backend import KiqBackend

__all__ = ["KiqBackend"]
