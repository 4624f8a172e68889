"""An ``azureml://`` tracking URI goes through the azureml-mlflow plugin; without a reachable workspace the
CLI says so in one line naming the URI (no network here: the credential and the workspace both fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

URI = ("azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/00000000-0000-0000-0000-000000000000"
       "/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws")


def test_the_plugin_is_installed_with_the_pinned_mlflow() -> None:
    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    assert version("mlflow") == "3.15.0" and version("azureml-mlflow") == "1.62.0.post6"
    assert "azureml" in _tracking_store_registry._registry  # the plugin's entry points are registered
    assert "azureml" in _get_store_registry()._registry


def test_unreachable_workspace_is_one_line_naming_the_uri(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))}
    env.update(HOME=str(tmp_path), AZURE_CONFIG_DIR=str(tmp_path / ".azure"))
    fleetscore = Path(sys.executable).with_name("fleetscore")
    done = subprocess.run([str(fleetscore), "--home", str(tmp_path / "state"), "--tracking-uri", URI, "models", "list"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"Error: tracking_uri {URI}: cannot reach the Azure ML workspace's MLflow "
                           "(ClientAuthenticationError); log in (az login, or the workflow's azure/login) "
                           "and check the URI\n")
    assert not (tmp_path / "state").exists()  # nothing created locally
