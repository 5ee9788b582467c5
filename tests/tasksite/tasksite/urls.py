from django.urls import path

from tasksite import views

urlpatterns = [
    path("enqueue/<str:name>", views.enqueue),
    path("aenqueue/<str:name>", views.aenqueue),
    path("result/<str:name>/<str:result_id>", views.result),
    path("backend", views.backend),
]
