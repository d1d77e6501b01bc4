#!/usr/bin/env bash
# Validates the Kubernetes manifests (every YAML in deploy/kubernetes/ and the inject goldens,
# tests/inject/*.golden.yaml) against the API schemas of each Kubernetes version we support,
# strictly (unknown fields are errors), offline: kubernetes-validate bundles the schemas.
#
#   python3 -m pip install -r tests/requirements.txt    # kubernetes-validate, pinned
#   bash deploy/validate-manifests.sh                    # one line per file and version
#
# 1.29 is the oldest version with native sidecars (init containers with restartPolicy:
# Always), which `outrigger inject` uses by default. Exits 1 if any file fails for any version.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

versions=(${KUBERNETES_VERSIONS:-1.29 1.30 1.31 1.32 1.33 1.34})

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "kubernetes-validate is not installed: python3 -m pip install -r tests/requirements.txt" >&2
    exit 2
fi

shopt -s nullglob
files=(deploy/kubernetes/*.yaml deploy/kubernetes/*.yml tests/inject/*.golden.yaml)
if [ ${#files[@]} -eq 0 ]; then
    echo "no manifests found" >&2
    exit 2
fi

failed=0
for f in "${files[@]}"; do
    for v in "${versions[@]}"; do
        if out="$(kubernetes-validate --strict --quiet --kubernetes-version "$v" "$f" 2>&1)"; then
            echo "ok    $f  (Kubernetes $v)"
        else
            echo "FAIL  $f  (Kubernetes $v)"
            printf '%s\n' "$out" | sed 's/^/      /'
            failed=1
        fi
    done
done
if [ "$failed" -ne 0 ]; then
    echo "some manifests are invalid" >&2
    exit 1
fi
echo "all ${#files[@]} files valid for Kubernetes ${versions[*]}"
