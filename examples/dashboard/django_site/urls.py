"""kiq's dashboard under /admin/kiq/, for the admin's staff: ``staff_member_required`` sends
anyone else to the admin's login page."""

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.urls import path, re_path

import kiq.web
from kiq.web.django import view

urlpatterns = [
    re_path(r"^admin/kiq(?P<path>/.*)?$", staff_member_required(view(kiq.web.app()))),
    path("admin/", admin.site.urls),
]
