"""Periodic maintenance on rq-scheduler: the schedule as data, validated, synced into Redis."""
