"""Integrations with other frameworks, each in its own subpackage.

A subpackage imports its framework; nothing in kiq's core imports a subpackage, so kiq runs
and enqueues without any of these frameworks installed (tests/test_layers.py checks it).

- ``kiq.contrib.django``: a backend for Django's tasks framework (``django.tasks`` in
  Django 6, the ``django-tasks`` backport before it); docs/django.md.
"""
