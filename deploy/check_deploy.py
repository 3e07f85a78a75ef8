"""Cross-checks of the deployment files that no schema can make (validate-deploy.sh runs
this with the rendered Kubernetes manifests as arguments).

The ports come from deploy/local/run.sh, the NATS version from ensure-deps.sh, the
variables from the README's configuration table and the health check's deadline from
shared/runtime/src/process.rs, so the deployment files cannot drift from the code's own
wiring unnoticed.

A rendered manifest where any service has ATELIER_TLS_CERT_FILE is checked as a TLS one
(overlays/tls): every service then needs its certificate, key and CA from its own
mounted Secret, https:// upstream URLs and exec probes, since the kubelet's grpc probes
cannot speak TLS.
"""

import pathlib
import re
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ["edge", "conversation", "intent", "enhancement", "title", "generation"]
# How long each service's own drain may take after the drain grace (ARCHITECTURE.md,
# "Shutdown and health"): the job loops' fixed drains.
JOB_DRAIN_SECS = {"title": 10, "generation": 20}
# The upstream URLs in atelier-config and the service each one names.
UPSTREAM_URLS = {
    "ATELIER_CONVERSATION_URL": "conversation",
    "ATELIER_INTENT_URL": "intent",
    "ATELIER_ENHANCEMENT_URL": "enhancement",
}
# With TLS on, each variable names this key of the service's Secret atelier-tls-<service>
# (the shape cert-manager writes; the README's "Deploy" section documents it).
TLS_FILES = {
    "ATELIER_TLS_CERT_FILE": "tls.crt",
    "ATELIER_TLS_KEY_FILE": "tls.key",
    "ATELIER_TLS_CA_FILE": "ca.crt",
}
# Where the Dockerfile puts the binaries, which exec probes run.
BIN_DIR = "/usr/local/bin"

errors = []


def check(ok, message):
    if not ok:
        errors.append(message)
    return ok


def port(addr):
    return int(str(addr).rsplit(":", 1)[1])


def run_sh_ports():
    """{service: (grpc port, metrics port)} as deploy/local/run.sh wires them."""
    text = (REPO / "deploy/local/run.sh").read_text()
    ports = {}
    for service in SERVICES:
        upper = service.upper()
        listen = re.search(
            r"\[%s\]=\"\$\{ATELIER_%s_LISTEN_ADDR:-[^:]+:(\d+)\}\"" % (service, upper), text
        )
        metrics = re.search(r"ATELIER_%s_METRICS_ADDR:-[^:]+:(\d+)\}" % upper, text)
        if check(listen and metrics, f"run.sh: no listen or metrics port found for {service}"):
            ports[service] = (int(listen.group(1)), int(metrics.group(1)))
    return ports


def health_check_deadline():
    """Seconds `--health-check` waits for an answer (process.rs, `health_check`)."""
    text = (REPO / "shared/runtime/src/process.rs").read_text()
    found = re.search(r"no answer within (\d+) s", text)
    check(found, "process.rs: the health check's deadline (\"no answer within N s\") is not found")
    return int(found.group(1)) if found else 3


def pinned_nats():
    text = (REPO / "deploy/local/ensure-deps.sh").read_text()
    return re.search(r"^nats_pinned=(\S+)$", text, re.M).group(1)


def documented_variables():
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## Configuration")
    end = readme.find("\n## ", start + 4)
    return set(re.findall(r"ATELIER_[A-Z0-9_]*[A-Z0-9]", readme[start:end]))


def check_variables_documented():
    documented = documented_variables()
    files = [REPO / "Dockerfile", *sorted((REPO / "deploy/compose").glob("*.y*ml"))]
    files += sorted((REPO / "deploy/kubernetes").rglob("*.yaml"))
    for path in files:
        for name in sorted(set(re.findall(r"ATELIER_[A-Z0-9_]*[A-Z0-9]", path.read_text()))):
            check(
                name in documented,
                f"{path.relative_to(REPO)}: {name} is not in the README's configuration table",
            )


def check_image():
    dockerfile = (REPO / "Dockerfile").read_text()
    for name in SERVICES:
        check(
            f"-p atelier-{name}" in dockerfile and f"target/release/atelier-{name}" in dockerfile,
            f"Dockerfile: atelier-{name} is not built and copied into the image",
        )
    check(
        f"COPY --from=build /out/ {BIN_DIR}/" in dockerfile,
        f"Dockerfile: the binaries are not copied into {BIN_DIR}, where the exec probes run them",
    )
    check("--locked" in dockerfile, "Dockerfile: the build does not use the workspace's Cargo.lock (--locked)")
    ignored = set((REPO / ".dockerignore").read_text().split())
    for path in (".git", "target", ".dev", ".data", "web/node_modules", "deploy/compose/.env"):
        check(path in ignored, f".dockerignore: {path} is not kept out of the build context")


def check_compose(ports):
    compose = yaml.safe_load((REPO / "deploy/compose/compose.yaml").read_text())
    services = compose["services"]
    nats_image = services["nats"]["image"]
    check(
        nats_image.startswith(f"nats:{pinned_nats()}"),
        f"compose: NATS image {nats_image} is not the pinned nats-server {pinned_nats()}",
    )
    for name in SERVICES:
        service = services.get(name)
        if not check(service, f"compose: service {name} is missing"):
            continue
        binary = f"atelier-{name}"
        env = service.get("environment", {})
        grpc, metrics = ports[name]
        check(service.get("command") == [binary], f"compose: {name} does not run {binary}")
        check(
            port(env.get("ATELIER_LISTEN_ADDR", ":0")) == grpc,
            f"compose: {name} does not listen on {grpc}",
        )
        check(
            port(env.get("ATELIER_METRICS_ADDR", ":0")) == metrics,
            f"compose: {name} does not serve metrics on {metrics}",
        )
        check(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4317",
            f"compose: {name} does not export spans to the collector",
        )
        check(
            service.get("healthcheck", {}).get("test") == ["CMD", binary, "--health-check"],
            f"compose: {name}'s health check is not `{binary} --health-check`",
        )
        for dependency, condition in service.get("depends_on", {}).items():
            check(
                dependency in services and "condition" in condition,
                f"compose: {name} depends on {dependency} without a condition",
            )
        if "ATELIER_NATS_URL" in env:
            check(
                env.get("ATELIER_NATS_STREAM_REPLICAS") == "1",
                f"compose: {name} must keep streams on the one NATS server (replicas 1)",
            )
    return services


def check_prometheus(ports, compose_services):
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    targets = {
        target
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    for name in SERVICES:
        target = f"{name}:{ports[name][1]}"
        check(target in targets, f"prometheus.yml: {target} ({name}) is not scraped")
    for target in targets:
        host = target.rsplit(":", 1)[0]
        check(
            host == "localhost" or host in compose_services,
            f"prometheus.yml: {target} is no compose service",
        )
    collector = yaml.safe_load((REPO / "deploy/compose/otel-collector.yaml").read_text())
    traces = collector["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for component in traces[kind]:
            check(
                component in collector.get(kind, {}),
                f"otel-collector.yaml: the traces pipeline names an undefined {component}",
            )


def check_tls_files(where, name, container, pod):
    """The three TLS variables name tls.crt, tls.key and ca.crt of the service's own
    Secret, atelier-tls-<service>, mounted read-only into the container."""
    app, secret = f"atelier-{name}", f"atelier-tls-{name}"
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
    mounts = {
        mount["mountPath"].rstrip("/"): (mount, volumes[mount["name"]]["secret"])
        for mount in container.get("volumeMounts", [])
        if volumes.get(mount["name"], {}).get("secret", {}).get("secretName") == secret
    }
    if not check(mounts, f"{where}: {app} does not mount its Secret {secret}"):
        return
    for mount, _ in mounts.values():
        check(mount.get("readOnly"), f"{where}: {app} mounts {secret} writable")
    for variable, key in TLS_FILES.items():
        path = env.get(variable)
        if not check(path, f"{where}: {app} has TLS on but no {variable}"):
            continue
        directory, _, file = path.rpartition("/")
        if not check(directory in mounts, f"{where}: {app}'s {variable} {path} is not in its Secret {secret}"):
            continue
        items = {item["key"]: item["path"] for item in mounts[directory][1].get("items", [])}
        check(
            file == items.get(key, None if items else key),
            f"{where}: {app}'s {variable} {path} is not the Secret's {key}",
        )


def check_kubernetes(ports, rendered, deadline):
    docs = [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]
    where = rendered.name
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = by_kind.get("ConfigMap", {}).get("atelier-config", {}).get("data", {})
    grace = int(config.get("ATELIER_DRAIN_GRACE_SECS", "0"))
    nats = by_kind.get("StatefulSet", {}).get("nats")
    if check(nats, f"{where}: no NATS StatefulSet"):
        replicas = nats["spec"]["replicas"]
        check(replicas >= 3, f"{where}: the NATS cluster has {replicas} servers, not 3 or more")
        check(
            config.get("ATELIER_NATS_STREAM_REPLICAS") == str(replicas),
            f"{where}: ATELIER_NATS_STREAM_REPLICAS is not the NATS cluster's {replicas}",
        )
        conf = by_kind["ConfigMap"]["nats-config"]["data"]["nats.conf"]
        routes = re.findall(r"nats://nats-\d+\.nats-headless:6222", conf)
        check(len(routes) == replicas, f"{where}: nats.conf routes {len(routes)} servers")
        image = nats["spec"]["template"]["spec"]["containers"][0]["image"]
        check(
            image.startswith(f"nats:{pinned_nats()}"),
            f"{where}: NATS image {image} is not the pinned nats-server {pinned_nats()}",
        )
    selected = {
        doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for doc in by_kind.get("PodDisruptionBudget", {}).values()
    }
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in by_kind.get("HorizontalPodAutoscaler", {}).values()}
    # TLS is on when any service has a certificate: its port then serves TLS only, so
    # every caller must use https:// (which needs the CA), and every probe must speak TLS.
    tls = any(
        item["name"] == "ATELIER_TLS_CERT_FILE"
        for doc in by_kind.get("Deployment", {}).values()
        for container in doc["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
    )
    services = by_kind.get("Service", {})
    for variable, target in UPSTREAM_URLS.items():
        url = config.get(variable, "")
        match = re.fullmatch(r"(\w+)://([^:/]+):(\d+)", url)
        if not check(match, f"{where}: {variable} {url!r} is not scheme://host:port"):
            continue
        scheme, host, number = match.group(1), match.group(2), int(match.group(3))
        expected = "https" if tls else "http"
        check(
            scheme == expected,
            f"{where}: {variable} is {scheme}:// but TLS is {'on' if tls else 'off'} (want {expected}://)",
        )
        check(number == ports[target][0], f"{where}: {variable} is not {target}'s port {ports[target][0]}")
        check(
            any(item.get("port") == number for item in services.get(host, {}).get("spec", {}).get("ports", [])),
            f"{where}: {variable} names no Service {host} with port {number}",
        )
    for name in SERVICES:
        app = f"atelier-{name}"
        deployment = by_kind.get("Deployment", {}).get(app)
        if not check(deployment, f"{where}: Deployment {app} is missing"):
            continue
        grpc, metrics = ports[name]
        pod = deployment["spec"]["template"]
        annotations = pod["metadata"].get("annotations", {})
        check(
            annotations.get("prometheus.io/scrape") == "true"
            and annotations.get("prometheus.io/port") == str(metrics)
            and annotations.get("prometheus.io/path") == "/metrics",
            f"{where}: {app} lacks the Prometheus annotations for port {metrics}",
        )
        container = pod["spec"]["containers"][0]
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        check(container.get("args") == [app], f"{where}: {app} does not run {app}")
        check(port(env.get("ATELIER_LISTEN_ADDR", ":0")) == grpc, f"{where}: {app} does not listen on {grpc}")
        check(
            port(env.get("ATELIER_METRICS_ADDR", ":0")) == metrics,
            f"{where}: {app} does not serve metrics on {metrics}",
        )
        # Readiness is grpc.health.v1 everywhere. The job consumers' health is NOT_SERVING
        # while they cannot consume (NATS away), so their startup and liveness probes only
        # check that the port accepts: a restart would not bring NATS back. With TLS the
        # kubelet's grpc probe cannot connect, so the binary probes itself, and the probe
        # must wait longer than the binary's own deadline.
        probe_command = [f"{BIN_DIR}/{app}", "--health-check"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container.get(probe, {})
            if name in JOB_DRAIN_SECS and probe != "readinessProbe":
                check(
                    spec.get("tcpSocket", {}).get("port") == grpc,
                    f"{where}: {app}'s {probe} is not a TCP check of {grpc}",
                )
                continue
            if tls:
                check("grpc" not in spec, f"{where}: {app}'s {probe} is a grpc probe, which cannot speak TLS")
                check(
                    spec.get("exec", {}).get("command") == probe_command,
                    f"{where}: {app}'s {probe} is not exec {probe_command}",
                )
                check(
                    spec.get("timeoutSeconds", 1) > deadline,
                    f"{where}: {app}'s {probe} times out before --health-check's {deadline} s deadline",
                )
                continue
            check(
                spec.get("grpc", {}).get("port") == grpc,
                f"{where}: {app}'s {probe} is not grpc.health.v1 on {grpc}",
            )
        if tls:
            check_tls_files(where, name, container, pod)
        resources = container.get("resources", {})
        check(
            resources.get("requests") and resources.get("limits"),
            f"{where}: {app} has no resource requests and limits",
        )
        needed = grace + JOB_DRAIN_SECS.get(name, 0) + 5
        period = pod["spec"].get("terminationGracePeriodSeconds", 30)
        check(
            period >= needed,
            f"{where}: {app}'s terminationGracePeriodSeconds {period} < drain grace {grace} s + drain + 5 s",
        )
        check(app in selected, f"{where}: {app} has no PodDisruptionBudget")
        if name in ("edge", "generation"):
            check(app in scaled, f"{where}: {app} has no HorizontalPodAutoscaler")
            check(
                "replicas" not in deployment["spec"],
                f"{where}: {app} sets replicas, which its autoscaler owns",
            )
    conversation = services.get("conversation", {})
    check(
        conversation.get("spec", {}).get("clusterIP") == "None",
        f"{where}: the conversation Service is not headless",
    )
    if tls:
        for service in services.values():
            for item in service["spec"].get("ports", []):
                check(
                    item.get("appProtocol") != "kubernetes.io/h2c",
                    f"{where}: Service {service['metadata']['name']} says h2c on {item.get('port')}, which serves TLS",
                )
    return tls


def main(rendered):
    ports = run_sh_ports()
    check_image()
    compose_services = check_compose(ports)
    check_prometheus(ports, compose_services)
    deadline = health_check_deadline()
    with_tls = [check_kubernetes(ports, pathlib.Path(path), deadline) for path in rendered]
    # So the TLS checks cannot stop running unnoticed (overlays/tls renamed or gone).
    check(not rendered or any(with_tls), "no rendered manifest turns TLS on: the TLS checks ran on nothing")
    check_variables_documented()
    for error in errors:
        print(f"check_deploy: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
