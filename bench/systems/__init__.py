"""One module per job system, each run only inside that system's own virtualenv.

A system module defines its jobs (whose bodies are in ``bench.jobs``) and:

- ``workers(processes, threads, redis_url, python)``: how to start its workers, as a dict
  with ``commands`` (argv lists, one process each), ``depth`` (which processes run the
  jobs: 0 those started, 1 their children, ``"leaves"`` the childless ones of their trees),
  ``shape`` (the concurrency it really used), and ``bulk`` and ``delay`` (whether it has
  bulk enqueue and delayed jobs);
- ``enqueue_noop(n, bulk)``, ``enqueue_stamp(key, value, delay)``, ``enqueue_slow(token, seconds)``;
- ``serve(threads)`` where a worker runs through ``bench.driver`` rather than a CLI.

``bench.driver`` calls them; the orchestrator never imports these modules.
"""

# celery_prefork: the same Celery app on its default pool, where a dead pool process's task is requeued.
SYSTEMS = ("kiq", "dramatiq", "celery", "celery_prefork", "rq", "arq", "huey")
