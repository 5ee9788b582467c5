"""A small app for `make run`: a few jobs, enqueued by the demo itself."""
