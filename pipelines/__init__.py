"""Orchestration layer: settings, the release and scoring pipelines, executors, schedules, the CLI."""
