"""A task outside any installed app's ``tasks`` module: the views import it, kiq's workers do
not (it is not in their ``require``), so they must refuse to run it."""

from taskapp.tasks import task


@task
def elsewhere():
    return "ran"
