#!/usr/bin/env bash
# Release a tiny synthetic Kimi K2 on CPU through every `k2trt release` stage and gate
# (ci/cpu-release.yaml: smoke gate on the CPU stand-in), sign it with a throwaway key and
# verify it. The CPU workflow runs this after .ci/run; run it locally the same way:
#   bash ci/cpu-release.sh
# Everything goes under scratch/cpu-release/ (git-ignored), emptied first; the release is
# scratch/cpu-release/out/NAME/VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."

# The environment .ci/run sets up, when there is one.
if [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi

SPEC=ci/cpu-release.yaml
WORK=scratch/cpu-release
rm -rf "$WORK"

# The spec's checkpoint.path (../scratch/cpu-release/tiny, relative to the spec) is this one.
k2trt synth "$WORK/tiny" --preset tiny
k2trt release keygen "$WORK/keys"
k2trt release build "$SPEC" "$WORK/out" --workdir "$WORK/work" \
    --sign-key "$WORK/keys/release-key.pem"

# The release lands in OUT/NAME/VERSION; NAME and VERSION as k2trt reads the spec.
RELEASE="$WORK/out/$(python3 -c 'import sys
from pathlib import Path
from k2trt.release.spec import ReleaseSpec
spec = ReleaseSpec.load(Path(sys.argv[1]))
print(f"{spec.name}/{spec.version}")' "$SPEC")"
k2trt release verify "$RELEASE" --public-key "$WORK/keys/release-key.pub.pem"
echo "cpu release ok: $RELEASE"
