#!/usr/bin/env bash
# Validates the rendered Kubernetes manifests (k8s/base and both overlays) against
# the Kubernetes API schemas with kubernetes-validate (PyPI), in strict mode, so a
# misspelt or misplaced field fails. Offline: the schemas ship with the package.
#
#   scripts/check-k8s.sh              # validate for the package's default version
#   K8S_VERSIONS="1.30 1.33" scripts/check-k8s.sh
#
# Needs kubectl (for `kubectl kustomize`) and `pip install kubernetes-validate`.
# The cargo test tests/tests/deploy_files.rs checks the Switchboard-specific rules
# (probes, resources, security contexts...); this script checks the schemas.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v kubectl >/dev/null 2>&1; then
    echo "check-k8s: kubectl not found; run scripts/install-deps.sh" >&2
    exit 2
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "check-k8s: kubernetes-validate not found; run: pip install kubernetes-validate" >&2
    exit 2
fi

# Oldest supported (matchLabelKeys and unhealthyPodEvictionPolicy are on by
# default from 1.27; PDB/HPA v2 GA long before) and the newest the package knows.
versions="${K8S_VERSIONS:-1.30 default}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

status=0
for target in base overlays/dev overlays/prod; do
    out="$tmp/$(echo "$target" | tr / -).yaml"
    kubectl kustomize "$root/k8s/$target" > "$out"
    for v in $versions; do
        args=(--strict --quiet)
        [ "$v" = default ] || args+=(--kubernetes-version "$v")
        if kubernetes-validate "${args[@]}" "$out"; then
            echo "check-k8s: k8s/$target valid (kubernetes ${v})"
        else
            echo "check-k8s: k8s/$target INVALID (kubernetes ${v})" >&2
            status=1
        fi
    done
done
exit "$status"
