from django.apps import AppConfig


class DjangoOtherConfig(AppConfig):
    name = "djangoother"
    default_auto_field = "django.db.models.AutoField"
