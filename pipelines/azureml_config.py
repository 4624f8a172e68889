"""Azure ML parameters (the ``[azureml]`` section of fleetscore.toml). Secrets never go here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AzureMLConfig:
    """Where and how the scoring pipeline is published to Azure ML. See docs/deploy-azure.md."""

    subscription_id: str = ""
    resource_group: str = ""
    workspace: str = ""
    compute: str = "fleetscore-cpu"
    vm_size: str = "Standard_D4s_v3"
    max_nodes: int = 4
    idle_seconds_before_scaledown: int = 300
    tier: str = "dedicated"  # or low_priority (cheaper, may be pre-empted; failed shards are retried)
    processes_per_node: int = 2  # parallel scoring processes on each node (about one per 2 cores)
    shards: int = 0  # 0: scoring.shards, else max_nodes * processes_per_node
    shard_retries: int = 2
    shard_timeout_s: int = 3600
    request_timeout_s: int = 120  # each call to the workspace (read timeout; 3 retries, 30 s to connect)
    operation_timeout_s: int = 1800  # a long-running create (a compute cluster, a schedule) waited for
    registry: str = ""  # Azure Container Registry login server, e.g. myacr.azurecr.io
    image_name: str = "fleetscore-scoring"
    image_tag: str = ""  # default: the git commit
    environment: str = "fleetscore-scoring"
    experiment: str = "fleetscore-scoring"
    pipeline: str = "fleetscore_scoring"
    schedule_name: str = "fleetscore-scoring"
