"""A second Django app whose Note shares its class name with djangoapp's."""

from django.db import models


class Note(models.Model):
    body = models.CharField(max_length=50)
