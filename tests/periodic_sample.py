"""A module that declares a periodic entry from Python, for the tests that require it."""

from sample_jobs import RecordJob

import kiq

kiq.periodic("*/2 * * * * *", RecordJob, name="from-python", args=["python-declared"])
