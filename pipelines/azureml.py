"""Azure ML (SDK v2, ``azure-ai-ml``): the scoring pipeline as workspace entities, published idempotently.

This is the only module that imports ``azure.ai.ml`` and ``azure.identity`` for Azure ML. It builds, from
plain :class:`PublishSpec` data:

- the scoring **environment** (the image in Azure Container Registry, tagged with the git commit);
- three **components** running ``fleetscore score-step ...`` in that image: ``plan`` (gate, resolve the
  release once, write one task file per shard), the **parallel** ``score_shards`` (one mini-batch = one
  shard, fanned out over ``instance_count`` nodes x ``max_concurrency_per_instance`` processes) and
  ``finalize`` (one commit to the predictions table, the manifest, run records);
- the scoring **pipeline job** over them (inputs: window start/end, release, devices, storage URL...);
- a **schedule** (cron or recurrence) that submits that pipeline;
- the **compute cluster** (AmlCompute, min 0 nodes: it scales to zero when idle).

:func:`write_dry_run` dumps every entity with the SDK's own ``dump`` (no Azure access);
:func:`publish` compares each desired entity with the workspace's and only sends what changed;
:func:`submit_scoring_job` submits one run. Every call that reaches Azure goes through the
:class:`Workspace` wrapper around an ``MLClient``, so tests can hand it a fake client.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from azure.ai.ml import Input, Output, dsl
from azure.ai.ml.entities import (
    AmlCompute,
    CommandComponent,
    CronTrigger,
    Environment,
    IdentityConfiguration,
    JobSchedule,
    ManagedIdentityConfiguration,
    PipelineJob,
    RecurrenceTrigger,
)
from azure.ai.ml.entities._job.parallel.retry_settings import RetrySettings
from azure.ai.ml.parallel import RunFunction, parallel_run_function
from azure.core.exceptions import AzureError, ResourceNotFoundError

from fleetscore import __version__, provenance
from fleetscore.errors import PublishError, one_line
from fleetscore.pipelines.azureml_plan import ScheduleSpec, TriggerSpec, job_environment, trigger_for
from fleetscore.pipelines.release_resolution import release_ref

log = logging.getLogger(__name__)
# The SDK warns about its own experimental classes on every load; that says nothing to a fleetscore user.
logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)

SPEC_TAG = "fleetscore.spec"
ENTRY_SCRIPT = "fleetscore_shards.py"
CODE_DIR = "code"
COMPONENTS = ("plan", "score_shards", "finalize")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PublishSpec:
    """Everything the Azure ML entities are built from, as plain data (see :func:`spec_from_settings`)."""

    image: str  # registry/name:tag
    image_tag: str
    environment: str
    compute: str
    vm_size: str
    max_nodes: int
    idle_seconds_before_scaledown: int
    tier: str
    processes_per_node: int
    shards: int
    retries: int
    shard_timeout_s: int
    experiment: str
    pipeline: str
    schedule_name: str
    storage_url: str
    release: str
    job_env: dict[str, str] = field(default_factory=dict)
    schedule: ScheduleSpec | None = None

    def fingerprint(self) -> str:
        """A stable hash of everything that shapes the entities."""
        return _digest(asdict(self))


@dataclass
class Entities:
    """The SDK objects of one publication."""

    compute: AmlCompute
    environment: Environment
    components: dict[str, Any]
    pipeline: PipelineJob
    schedule: JobSchedule | None
    trigger: TriggerSpec | None


@dataclass(frozen=True)
class Action:
    """What publishing did to one entity: ``created``, ``updated`` or ``unchanged``."""

    kind: str
    name: str
    version: str
    action: str


def spec_from_settings(settings: Any, image_tag: str = "", schedule: ScheduleSpec | None = None) -> PublishSpec:
    """The publish spec of resolved settings (``[azureml]`` section, URLs, scoring shards)."""
    cfg = settings.azureml
    tag = image_tag or cfg.image_tag or git_commit()
    if not cfg.registry:
        raise PublishError("azureml.registry is not set: the login server of the container registry, "
                           "e.g. myacr.azurecr.io (FLEETSCORE_AZUREML__REGISTRY)")
    if cfg.max_nodes < 1 or cfg.processes_per_node < 1:
        raise PublishError(f"azureml.max_nodes ({cfg.max_nodes}) and azureml.processes_per_node "
                           f"({cfg.processes_per_node}) must be at least 1")
    shards = cfg.shards or settings.scoring.shards  # 0: the plan step sizes the run to the fleet
    return PublishSpec(
        image=f"{cfg.registry}/{cfg.image_name}:{tag}", image_tag=tag, environment=cfg.environment,
        compute=cfg.compute, vm_size=cfg.vm_size, max_nodes=cfg.max_nodes,
        idle_seconds_before_scaledown=cfg.idle_seconds_before_scaledown, tier=cfg.tier,
        processes_per_node=cfg.processes_per_node, shards=shards, retries=cfg.shard_retries,
        shard_timeout_s=cfg.shard_timeout_s, experiment=cfg.experiment, pipeline=cfg.pipeline,
        schedule_name=cfg.schedule_name, storage_url=settings.storage_url, release=release_ref(settings, None),
        job_env=job_environment(settings), schedule=schedule,
    )


def git_commit(cwd: str | None = None) -> str:
    """The commit of the checkout (the image tag by default)."""
    commit = provenance.git_commit(cwd or os.getcwd())
    if commit is None:
        raise PublishError("no image tag: not in a git checkout; set azureml.image_tag or --image-tag")
    return commit


# -- building the entities (no Azure access) -------------------------------------------------------------------


def write_code_dir(dest: Path) -> Path:
    """Write the parallel step's entry script (``pipelines/azureml_entry.py``) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).with_name("azureml_entry.py").read_text(encoding="utf-8")
    (dest / ENTRY_SCRIPT).write_text(source, encoding="utf-8")
    return dest


def build_entities(spec: PublishSpec, code_dir: Path) -> Entities:
    """The SDK entities of ``spec``; ``code_dir`` holds the entry script (:func:`write_code_dir`)."""
    env_ref = f"azureml:{spec.environment}:{spec.image_tag}"
    components = _components(spec, env_ref, code_dir)
    trigger = trigger_for(spec.schedule) if spec.schedule is not None else None
    pipeline = build_pipeline(spec, components)
    schedule = None
    if spec.schedule is not None and trigger is not None:
        schedule = JobSchedule(
            name=spec.schedule_name, trigger=_sdk_trigger(trigger), create_job=pipeline,
            display_name=f"fleetscore scoring, {spec.schedule.describe()}",
            tags={SPEC_TAG: _digest({"spec": spec.fingerprint(), "versions": _versions(components)})},
        )
    return Entities(
        compute=AmlCompute(
            name=spec.compute, size=spec.vm_size, min_instances=0, max_instances=spec.max_nodes,
            idle_time_before_scale_down=spec.idle_seconds_before_scaledown, tier=spec.tier,
            identity=IdentityConfiguration(type="system_assigned"),
            tags={"fleetscore.version": __version__},
        ),
        environment=Environment(name=spec.environment, version=spec.image_tag, image=spec.image,
                                description="fleetscore scoring image", tags={"git_commit": spec.image_tag}),
        components=components, pipeline=pipeline, schedule=schedule, trigger=trigger,
    )


def _components(spec: PublishSpec, env_ref: str, code_dir: Path) -> dict[str, Any]:
    plan = CommandComponent(
        name="fleetscore_plan", display_name="plan the scoring run",
        description="Data-checks gate, resolve the release once, one task file per shard of devices.",
        environment=env_ref,
        command=("fleetscore --storage-url ${{inputs.storage_url}} score-step plan --start ${{inputs.start}} "
                 "--end ${{inputs.end}} --schedule '${{inputs.schedule}}' --lag ${{inputs.lag}} "
                 "--release ${{inputs.release}} --devices '${{inputs.devices}}' --shards ${{inputs.shards}} "
                 "--force ${{inputs.force}} --out ${{outputs.tasks}}"),
        inputs={name: Input(type="string") for name in ("start", "end", "schedule", "lag", "release", "devices",
                                                          "storage_url", "force")} | {"shards": Input(type="integer")},
        outputs={"tasks": Output(type="uri_folder")},
        is_deterministic=False,
    )
    score = parallel_run_function(
        name="fleetscore_score_shards", display_name="score shards",
        description="Scores one shard of devices per mini-batch: fleetscore score-step shard TASK.",
        inputs={"tasks": Input(type="uri_folder"), "storage_url": Input(type="string")},
        outputs={"results": Output(type="uri_file")},
        input_data="${{inputs.tasks}}", mini_batch_size="1",
        instance_count=spec.max_nodes, max_concurrency_per_instance=spec.processes_per_node,
        mini_batch_error_threshold=-1,  # a failed shard never stops the others; finalize decides
        # the hint says BatchRetrySettings; the component validates for RetrySettings (azure-ai-ml 1.35)
        retry_settings=RetrySettings(max_retries=spec.retries, timeout=spec.shard_timeout_s),  # type: ignore[arg-type]
        logging_level="INFO", is_deterministic=False,
        task=RunFunction(code=str(code_dir), entry_script=ENTRY_SCRIPT, environment=env_ref,
                         program_arguments="--storage-url ${{inputs.storage_url}}",
                         append_row_to="${{outputs.results}}"),
    ).component
    finalize = CommandComponent(
        name="fleetscore_finalize", display_name="finalize the scoring run",
        description="Checks the parts, commits them to the predictions table, writes the manifest, records it.",
        environment=env_ref,
        command=("fleetscore --storage-url ${{inputs.storage_url}} score-step finalize "
                 "--tasks ${{inputs.tasks}} --results ${{inputs.results}}"),
        inputs={"tasks": Input(type="uri_folder"), "results": Input(type="uri_file"),
                "storage_url": Input(type="string")},
        is_deterministic=False,
    )
    built: dict[str, Any] = {"plan": plan, "score_shards": score, "finalize": finalize}
    code_hash = _digest({p.name: p.read_text(encoding="utf-8") for p in sorted(code_dir.iterdir())})
    for component in built.values():
        content = _replace(_yaml_dict(component, drop=("version", "tags")), str(code_dir), f"./{CODE_DIR}")
        component.version = _digest({"component": content, "code": code_hash})[:16]
        component.tags = {"fleetscore.version": __version__}
    return built


def build_pipeline(spec: PublishSpec, components: dict[str, Any], **inputs: Any) -> PipelineJob:
    """The scoring pipeline job over ``components`` (objects built here or fetched from the workspace).

    ``inputs`` override the published defaults: window ``start``/``end`` (``auto``: the latest due window
    of ``schedule``), ``release``, ``devices`` (``all`` or ``D1,D2``), ``storage_url``, ``shards``.
    """
    schedule = spec.schedule.as_input() if spec.schedule else "every:1h"
    values = {"start": "auto", "end": "auto", "schedule": schedule, "lag": spec.schedule.lag if spec.schedule
              else "0s", "release": spec.release, "devices": "all", "storage_url": spec.storage_url,
              "shards": spec.shards, "force": "false"}
    unknown = sorted(set(inputs) - set(values))
    if unknown:
        raise PublishError(f"unknown pipeline input {unknown[0]}; known: {', '.join(values)}")
    values.update({k: v for k, v in inputs.items() if v is not None})
    plan_c, score_c, finalize_c = (components[name] for name in COMPONENTS)

    @dsl.pipeline(name=spec.pipeline, display_name="fleetscore scoring", experiment_name=spec.experiment,
                  default_compute=spec.compute)  # type: ignore[call-overload]
    def fleetscore_scoring(start, end, schedule, lag, release, devices, storage_url, shards, force):  # type: ignore[no-untyped-def]
        # no annotations: the SDK reads them at run time and `from __future__ import annotations` hides them
        plan = plan_c(start=start, end=end, schedule=schedule, lag=lag, release=release, devices=devices,
                      storage_url=storage_url, shards=shards, force=force)
        score = score_c(tasks=plan.outputs.tasks, storage_url=storage_url)
        finalize = finalize_c(tasks=plan.outputs.tasks, results=score.outputs.results, storage_url=storage_url)
        _run_as_cluster(plan, spec.job_env)
        _run_as_cluster(score, spec.job_env)
        _run_as_cluster(finalize, spec.job_env)

    job: PipelineJob = fleetscore_scoring(**values)
    job.tags = {"fleetscore.version": __version__, "image": spec.image_tag}
    return job


def _run_as_cluster(node: Any, job_env: dict[str, str]) -> None:
    """A step sees the stores through ``FLEETSCORE_*`` and reaches them as the cluster's managed identity."""
    node.environment_variables = dict(job_env)
    node.identity = ManagedIdentityConfiguration()


def _sdk_trigger(trigger: TriggerSpec) -> CronTrigger | RecurrenceTrigger:
    if trigger.kind == "cron":
        return CronTrigger(expression=trigger.expression, time_zone="UTC")
    return RecurrenceTrigger(frequency=trigger.frequency, interval=trigger.interval,
                             start_time=trigger.start_time, time_zone="UTC")


def write_dry_run(entities: Entities, out: Path) -> list[Path]:
    """Dump every entity as the YAML the SDK (and ``az ml``) loads; returns the files written.

    Components reference the environment and the pipeline by name; the schedule points at
    ``pipeline.yml`` (the SDK cannot read back a schedule with the job inlined).
    """
    out.mkdir(parents=True, exist_ok=True)
    code_dir = str(Path(entities.components["score_shards"].task.code))
    files = {
        "compute.yml": entities.compute, "environment.yml": entities.environment,
        **{f"component-{name}.yml": entities.components[name] for name in COMPONENTS},
        "pipeline.yml": entities.pipeline,
    }
    written = []
    for name, entity in files.items():
        data = _replace(_yaml_dict(entity), code_dir, f"./{CODE_DIR}")
        written.append(_write_yaml(out / name, data))
    if entities.schedule is not None:
        data = _yaml_dict(entities.schedule)
        data["create_job"] = "./pipeline.yml"
        written.append(_write_yaml(out / "schedule.yml", data))
    if Path(code_dir).resolve() != (out / CODE_DIR).resolve():
        write_code_dir(out / CODE_DIR)
    written.append(out / CODE_DIR / ENTRY_SCRIPT)
    return written


def _yaml_dict(entity: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    stream = io.StringIO()
    entity.dump(stream)
    data: dict[str, Any] = yaml.safe_load(stream.getvalue())
    return {k: v for k, v in data.items() if k not in drop}


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=True, default_flow_style=False), encoding="utf-8")
    return path


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    return new if value == old else value


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _versions(components: dict[str, Any]) -> dict[str, str]:
    return {name: str(c.version) for name, c in components.items()}


# -- talking to the workspace ------------------------------------------------------------------------------------


class Workspace:
    """The thin layer over ``MLClient``: the only calls that reach Azure."""

    def __init__(self, client: Any, where: str = "the workspace", operation_timeout_s: float = 1800) -> None:
        self.client = client
        self.where = where
        self.operation_timeout_s = operation_timeout_s

    @classmethod
    def connect(cls, config: Any) -> Workspace:
        """An ``MLClient`` on the ``[azureml]`` workspace with ``DefaultAzureCredential`` (OIDC in CI,
        a managed identity on Azure, ``az login`` on a laptop)."""
        missing = [k for k in ("subscription_id", "resource_group", "workspace") if not getattr(config, k)]
        if missing:
            raise PublishError(f"azureml.{missing[0]} is not set (FLEETSCORE_AZUREML__{missing[0].upper()})")
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential

        # azure-core's transport and retry settings, passed to every service client of the MLClient
        client = MLClient(DefaultAzureCredential(), config.subscription_id, config.resource_group, config.workspace,
                          connection_timeout=30, read_timeout=config.request_timeout_s, retry_total=3)
        return cls(client, f"workspace {config.workspace}", config.operation_timeout_s)

    def get(self, kind: str, name: str, **kwargs: Any) -> Any | None:
        """The entity ``name`` of ``kind`` (``compute``, ``environments``, ``components``, ``schedules``),
        or ``None`` when it does not exist."""
        try:
            return getattr(self.client, kind).get(name, **kwargs)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise PublishError(f"{self.where}: reading {kind} {name} failed: {one_line(exc.message or exc)}") from exc

    def put(self, kind: str, entity: Any) -> Any:
        """Create or update ``entity``; waits for long-running operations."""
        ops = getattr(self.client, kind)
        try:
            if kind in ("compute", "schedules"):
                poller = ops.begin_create_or_update(entity)
                done = poller.result(timeout=self.operation_timeout_s)
                if not poller.done():
                    raise PublishError(
                        f"{self.where}: writing {kind} {entity.name}: not finished within "
                        f"{self.operation_timeout_s:g} s ([azureml] operation_timeout_s); its state is in Azure ML "
                        "studio, and publishing again picks it up")
                return done
            return ops.create_or_update(entity)
        except AzureError as exc:
            raise PublishError(f"{self.where}: writing {kind} {entity.name} failed: {one_line(exc.message or exc)}") \
                from exc

    def submit(self, job: PipelineJob, experiment: str) -> str:
        """Submit a pipeline job; returns its name."""
        try:
            created = self.client.jobs.create_or_update(job, experiment_name=experiment)
        except AzureError as exc:
            reason = one_line(exc.message or exc)
            raise PublishError(f"{self.where}: submitting the scoring pipeline failed: {reason}") from exc
        return str(created.name)


def publish(spec: PublishSpec, workspace: Workspace, on_progress: Progress | None = None) -> list[Action]:
    """Create or update every entity of ``spec`` in the workspace; unchanged ones are left alone."""
    with tempfile.TemporaryDirectory(prefix="fleetscore-azureml-") as tmp:
        entities = build_entities(spec, write_code_dir(Path(tmp) / CODE_DIR))
        steps: list[Callable[[], Action]] = [
            lambda: _ensure_compute(workspace, entities.compute),
            lambda: _ensure_environment(workspace, entities.environment),
            *[(lambda name=name: _ensure_component(workspace, entities.components, name)) for name in COMPONENTS],
        ]
        if entities.schedule is not None:
            steps.append(lambda: _ensure_schedule(workspace, spec, entities))
        actions = []
        for done, step in enumerate(steps, start=1):
            actions.append(step())
            log.info("%s %s %s: %s", *asdict(actions[-1]).values())
            if on_progress is not None:
                on_progress(done, len(steps))
    return actions


def _ensure_compute(ws: Workspace, desired: AmlCompute) -> Action:
    name = str(desired.name)
    current = ws.get("compute", name)
    fields = ("min_instances", "max_instances", "idle_time_before_scale_down", "tier")
    if current is not None and str(current.size).lower() == str(desired.size).lower() and all(
            getattr(current, f, None) == getattr(desired, f) for f in fields):
        return Action("compute", name, "", "unchanged")
    ws.put("compute", desired)
    return Action("compute", name, "", "created" if current is None else "updated")


def _ensure_environment(ws: Workspace, desired: Environment) -> Action:
    name, version = str(desired.name), str(desired.version)
    current = ws.get("environments", name, version=version)
    if current is not None:
        if current.image != desired.image:
            raise PublishError(f"environment {name}:{version} already exists with image "
                               f"{current.image}, not {desired.image}; publish a new image tag")
        return Action("environment", name, version, "unchanged")
    ws.put("environments", desired)
    return Action("environment", name, version, "created")


def _ensure_component(ws: Workspace, components: dict[str, Any], key: str) -> Action:
    desired = components[key]
    name, version = str(desired.name), str(desired.version)
    current = ws.get("components", name, version=version)
    if current is None:
        current = ws.put("components", desired)
        action = "created"
    else:
        action = "unchanged"
    components[key] = current  # the pipeline refers to the registered component
    return Action("component", name, version, action)


def _ensure_schedule(ws: Workspace, spec: PublishSpec, entities: Entities) -> Action:
    assert entities.schedule is not None
    desired, name = entities.schedule, str(entities.schedule.name)
    current = ws.get("schedules", name)
    if current is not None and (current.tags or {}).get(SPEC_TAG) == (desired.tags or {}).get(SPEC_TAG):
        return Action("schedule", name, "", "unchanged")
    desired.create_job = build_pipeline(spec, entities.components)
    ws.put("schedules", desired)
    return Action("schedule", name, "", "created" if current is None else "updated")


def submit_scoring_job(settings: Any, start: datetime | None, end: datetime | None, release: str | None,
                       devices: list[str] | None, workspace: Workspace | None = None, *, force: bool = False) -> str:
    """Submit one run of the published scoring pipeline for ``[start, end)``; returns the job name.

    Uses the components as last published (label ``latest``), so it runs the image the release
    workflow built; ``fleetscore publish --target azureml`` must have run once. ``force``: score again a
    window already scored with the same release and data (a new run beside the old one).
    """
    if start is None or end is None:
        raise PublishError("--executor azureml needs a window: give --start and --end, or --last")
    ws = workspace or Workspace.connect(settings.azureml)
    cfg = settings.azureml
    components = {}
    for key in COMPONENTS:
        name = f"fleetscore_{key}"
        found = ws.get("components", name, label="latest")
        if found is None:
            raise PublishError(f"component {name} is not published in {ws.where}: "
                               "run fleetscore publish --target azureml first")
        components[key] = found
    spec = PublishSpec(
        image="", image_tag="", environment=cfg.environment, compute=cfg.compute, vm_size=cfg.vm_size,
        max_nodes=cfg.max_nodes, idle_seconds_before_scaledown=cfg.idle_seconds_before_scaledown, tier=cfg.tier,
        processes_per_node=cfg.processes_per_node,
        shards=cfg.shards or settings.scoring.shards,
        retries=cfg.shard_retries, shard_timeout_s=cfg.shard_timeout_s, experiment=cfg.experiment,
        pipeline=cfg.pipeline, schedule_name=cfg.schedule_name, storage_url=settings.storage_url,
        release=release_ref(settings, None), job_env=job_environment(settings),
    )
    job = build_pipeline(spec, components, start=start.isoformat(), end=end.isoformat(), release=release,
                         devices=",".join(devices) if devices else None, force="true" if force else "false")
    name = ws.submit(job, cfg.experiment)
    log.info("submitted Azure ML scoring job %s for %s .. %s", name, start, end)
    return name

