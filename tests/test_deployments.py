"""prefect.yaml declares deployments that point at real flows with valid parameters."""

from pathlib import Path

import yaml

from data_specs.config import parse_config

REPO = Path(__file__).resolve().parent.parent


def test_build_dataset_deployment_is_scheduled_and_valid():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "build-dataset")
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert flow.name == "build-dataset"
    config = parse_config(deployment["parameters"]["config"])
    assert config.execution.ray_address == "auto"
    (schedule,) = deployment["schedules"]
    Cron(schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron expression
    # The parameters validate against the flow's own signature, as the Prefect API does.
    flow.validate_parameters(deployment["parameters"])
