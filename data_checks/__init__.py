"""data_checks layer of fleetscore: the Great Expectations gate on the SQL table of windows.

Public API (the release and scoring pipelines call exactly this)::

    report = run_validation(database_url, start, end, config, report_dir=..., docs_dir=None,
                            window=timedelta(seconds=5), devices=None)
    report.raise_if_failed()          # ValidationFailed with one line when a fleet-level check failed
    report.excluded                   # {(device, sensor): reason} to leave out of training / scoring
    load_report(id_or_path, report_dir)

    # the scoring pipeline's way: fleet checks now, series checks on metrics of rows read elsewhere
    pending = run_fleet_validation(database_url, start, end, config, report_dir=..., window=..., devices=None)
    report = complete_validation(pending, metrics=frame, sql_devices=[...])

Great Expectations is imported only when a validation runs (it takes about 3 s to import).
"""

from fleetscore.data_checks.config import CheckConfig
from fleetscore.data_checks.gate import (
    PendingValidation,
    complete_validation,
    run_fleet_validation,
    run_validation,
    series_stats_in_sql,
)
from fleetscore.data_checks.ranges import learn_ranges
from fleetscore.data_checks.report import CheckResult, ValidationReport, load_report

__all__ = ["CheckConfig", "CheckResult", "PendingValidation", "ValidationReport", "complete_validation", "learn_ranges",
           "load_report", "run_fleet_validation", "run_validation", "series_stats_in_sql"]
