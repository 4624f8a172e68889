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
    registry: str = ""  # Azure Container Registry login server, e.g. myacr.azurecr.io
    image_name: str = "fleetscore-scoring"
    image_tag: str = ""  # default: the git commit
