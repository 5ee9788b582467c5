from django.apps import AppConfig


class DjangoAppConfig(AppConfig):
    name = "djangoapp"
    default_auto_field = "django.db.models.AutoField"
