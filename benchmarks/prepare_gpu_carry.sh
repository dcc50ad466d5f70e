#!/usr/bin/env bash
# Download, HERE (a machine with a package registry), the wheels that benchmarks/gpu_check.sh
# installs on the GPU machine, which has no registry.  They go to .whl/ in the repository root
# (ignored by .gitignore) and travel with the device tool's run(carry=[".whl"]).
#
#   bash benchmarks/prepare_gpu_carry.sh            # pinned timm + fallbacks (default)
#   bash benchmarks/prepare_gpu_carry.sh --minimal  # pinned timm only
#
# What and why (the GPU image's packages: /work/.library/device/KINDS.md):
#   pinned    timm, at the version this checkout is tested with here (the image has some timm,
#             version unknown; the golden hashes and the rpg_* entrypoints assume this one).
#             gpu_check.sh always installs it (over the image's).
#   fallback  transformers, huggingface_hub, safetensors, tokenizers at the versions the image
#             was seen holding (KINDS.md, 2026-11): rpg_hf imports them; gpu_check.sh installs
#             one only when the image lacks that distribution, so the image's consistent set
#             is never mixed with ours.
# All wheels are for CPython 3.12 (the image's python3) on manylinux x86_64; pure-Python ones
# (py3-none-any) as they are.  One version per package (two would stop the install there).
# The total must stay well under the 64 MiB the device tool carries (checked below: 40 MiB).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
PY="${PYTHON:-python3}"
MAX_MIB="${MAX_MIB:-40}"

TIMM_VERSION="${TIMM_VERSION:-$("$PY" -c 'import timm; print(timm.__version__)' 2>/dev/null || echo 1.0.31)}"
PINNED=("timm==$TIMM_VERSION")
FALLBACK=("transformers==5.17.0" "huggingface_hub==1.33.0" "safetensors==0.8.0" "tokenizers==0.23.2")
[[ "${1:-}" == "--minimal" ]] && FALLBACK=()

mkdir -p "$DEST"
grep -qx '/.whl/' "$ROOT/.gitignore" 2>/dev/null || echo "warning: /.whl/ is not in .gitignore" >&2

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

norm() { echo "$1" | tr 'A-Z-.' 'a-z__'; }  # wheel file names use the normalised distribution name

for spec in "${PINNED[@]}" "${FALLBACK[@]}"; do
  name="${spec%%==*}"
  version="${spec#*==}"
  base="$(norm "$name")"
  # keep one version of each package: drop any other version already there
  for old in "$DEST"/*.whl; do
    [[ -e "$old" ]] || continue
    f="$(basename "$old")"
    if [[ "$(norm "${f%%-*}")" == "$base" && "$f" != "${f%%-*}-$version-"* ]]; then
      echo "removing other version $f"
      rm -f "$old"
    fi
  done
  if compgen -G "$DEST/${base}-${version}-*.whl" >/dev/null; then
    echo "have $spec"
    continue
  fi
  echo "downloading $spec"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "$spec"
done

# the list gpu_check.sh reads: which wheels it always installs
printf '%s\n' "${PINNED[@]%%==*}" >"$DEST/PINNED"

echo
echo "wheels in $DEST:"
total=0
for f in "$DEST"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '  %-70s %8.2f MiB\n' "$(basename "$f")" "$(echo "$size / 1048576" | bc -l)"
done
printf '  %-70s %8.2f MiB\n' "total" "$(echo "$total / 1048576" | bc -l)"
if ((total > MAX_MIB * 1048576)); then
  echo "error: the wheels take more than $MAX_MIB MiB (the device tool carries 64 MiB with the tree)" >&2
  exit 1
fi
