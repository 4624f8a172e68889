"""The bookkeeping tables: the run log (``scoring_runs``), the schedules and window locks
(``scoring_schedules``, ``scoring_windows``) and the alias moves (``alias_log``).

They live in the same SQL database as the sensor store and use its engine (``ingestion.engine``), but
record what fleetscore did rather than what the fleet measured.
"""
