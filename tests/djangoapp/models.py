"""A Django app for the global ID tests: one model with a unique class name, one shared with djangoother."""

from django.db import models


class Article(models.Model):
    title = models.CharField(max_length=50)


class Note(models.Model):
    text = models.CharField(max_length=50)
