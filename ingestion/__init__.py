"""ingestion: readings in, windows out; the only layer that talks to SQL (see docs/architecture.md).

Public API used by the later stages:

- ``ingestion.store.SensorStore(database_url)``: ``create_schema()``,
  ``read_windows(start=None, end=None, devices=None, sensors=None) -> DataFrame`` (device, sensor, ts,
  value, value_min, value_max, value_count; sorted by device, sensor, ts; range ``[start, end)``),
  ``list_series(start=None, end=None)`` (device, sensor, rows, first_ts, last_ts), ``time_range()``,
  ``devices()``, ``count_windows()``, ``quarantine_counts()``.
- ``ingestion.sharding.shard_devices(devices, n_shards)`` (also importable from ``ingestion.store``):
  deterministic, balanced, sorted shards of devices.
- ``ingestion.ingest.ingest_files(...)``: the library function behind ``fleetscore ingest``.
- ``ingestion.eventhub``: the Event Hubs source (needs the ``azure`` extra).

A window is labelled by its start: window ``ts`` holds readings with ``ts <= t < ts + window``; all
times are naive UTC.
"""
