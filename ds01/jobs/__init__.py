"""Batch jobs: their records (`records`) and their logs in the user's workspace (`joblog`)."""
