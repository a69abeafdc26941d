#!/usr/bin/env bash
# Validates the manifests here offline against the Kubernetes API schemas (strict: unknown
# fields are errors), for the oldest and the newest Kubernetes the validator knows, with the
# `kubernetes-validate` Python package in a venv under target/. Then shows that the validator
# catches mistakes: broken copies of the manifests (a wrong type, a misspelt field, a missing
# required field) must each be refused, or the check is worth nothing.
#
#   examples/kubernetes/validate.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/examples/kubernetes"
venv="${WEFT_KUBE_VENV:-$root/target/kube-venv}"
version="1.37.0"
oldest="1.25.0"

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi
validate() { "$venv/bin/kubernetes-validate" --strict --quiet "$@"; }

manifests=("$here"/*.yaml)
validate -k "$oldest" "${manifests[@]}"
validate -k "$version" "${manifests[@]}"
echo "kubernetes manifests: ${#manifests[@]} files valid for Kubernetes $oldest and $version"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed 's/replicas: 3$/replicas: three/' "$here/nodes.yaml" > "$tmp/wrong-type.yaml"
sed 's/readinessProbe:/readinessProbes:/' "$here/nodes.yaml" > "$tmp/misspelt-field.yaml"
sed '/^  selector:$/{N;d}' "$here/agent.yaml" > "$tmp/missing-selector.yaml"
failed=0
for broken in "$tmp"/*.yaml; do
  name="$(basename "$broken")"
  if cmp -s "$broken" "$here/nodes.yaml" || cmp -s "$broken" "$here/agent.yaml"; then
    echo "FAILED: the broken copy $name is not broken (its edit matched nothing)"
    failed=1
  elif validate "$broken" >"$tmp/out" 2>&1; then
    echo "FAILED: the validator accepted the broken copy $name"
    failed=1
  else
    echo "caught: $name: $(grep -o 'did not validate.*' "$tmp/out" | head -1)"
  fi
done
exit "$failed"
