#!/usr/bin/env bash
# Build an rlkit image with the versions of docker/versions.env:
#   docker/build.sh cuda|rocm|ascend [TAG] [extra docker build arguments...]
set -euo pipefail

family="${1:?usage: docker/build.sh cuda|rocm|ascend [TAG] [docker build args...]}"
here="$(cd "$(dirname "$0")" && pwd)"
dockerfile="$here/Dockerfile.$family"
[[ -f "$dockerfile" ]] || { echo "no image family '$family' (cuda, rocm or ascend)" >&2; exit 2; }
tag="${2:-rlkit:$family}"
shift $(( $# >= 2 ? 2 : 1 ))

args=()
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "${line// }" || "$line" == \#* ]] && continue
  args+=(--build-arg "$line")
done < "$here/versions.env"

# the repository root is the context; the Dockerfile's .dockerignore keeps it to the package sources
exec docker build --file "$dockerfile" --tag "$tag" "${args[@]}" "$@" "$here/.."
