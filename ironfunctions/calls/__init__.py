"""Call records: every invocation's id, status, timings and log, kept per app."""
