"""simulation: fleet readings with labelled anomalies, and detection quality against the labels.

- ``simulation.simulate``: the simulator behind ``fleetscore simulate`` (``--profile uniform``, the
  reference simulator's uniform readings; ``--profile industrial``, a plant of pumps).
- ``simulation.labels``: the labels file (``Device,Sensor,Kind,Start,End,Label``), labelling windows and
  measuring recall per kind and false alarms against it.

It may use ``ingestion`` (to ingest what it simulates); only ``pipelines`` (the CLI, the demo) import it.
"""
