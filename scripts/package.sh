#!/usr/bin/env bash
# Package the service offline for each stage, then check the generated CloudFormation templates.
#
#   scripts/package.sh                      # dev, staging and prod
#   scripts/package.sh --stage prod         # one stage (repeat --stage, or give a comma-separated list)
#   scripts/package.sh --out /tmp/pkg       # artifacts under /tmp/pkg/<stage>/ instead of .cache/package/
#
# Needs no AWS credentials and no Docker: osls builds the templates and the code zip locally, and
# serverless-python-requirements downloads the Lambda platform's wheels (arm64, CPython 3.12) with a local
# python3.12. Each stage's artifacts land in .cache/package/<stage>/ (deploy one with
# `npx osls deploy --stage <stage> --package .cache/package/<stage>`). Then every template must pass
# cfn-lint (no errors, no warnings) and checkov (no failed check; skips are justified in serverless.yml).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHECKOV_VERSION=3.3.30
CHECKOV_VENV="$ROOT/.checkov-venv"
CFN_LINT="$ROOT/.venv/bin/cfn-lint"
OUT_ROOT="$ROOT/.cache/package"
LOCK="$ROOT/.cache/package.lock"

die() { echo "package.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

stages=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) [[ $# -ge 2 ]] || die "--stage needs a value"; IFS=',' read -r -a more <<< "$2"; stages+=("${more[@]}"); shift 2 ;;
    --stage=*) IFS=',' read -r -a more <<< "${1#--stage=}"; stages+=("${more[@]}"); shift ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT_ROOT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (usage: scripts/package.sh [--stage dev|staging|prod ...])" ;;
  esac
done
[[ ${#stages[@]} -gt 0 ]] || stages=(dev staging prod)
for stage in "${stages[@]}"; do
  [[ "$stage" =~ ^[a-z][a-z0-9-]*$ ]] || die "invalid stage name: $stage"
  # The local stage allows loopback hosts and runs on an emulator: deployed, a job could reach the Lambda runtime.
  [[ "$stage" != local ]] || die "the local stage is never packaged or deployed (python -m throttler local runs it)"
done

# One run at a time in this work tree: osls stages every build in .serverless/ and the plugin shares its cache.
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
if ! flock -n 9; then
  echo "package.sh: another packaging run holds $LOCK; waiting for it" >&2
  flock 9
fi

# --- Offline and credential-free: never read a developer's AWS profile, never phone home. ---
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT_URL
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_EC2_METADATA_DISABLED=true  # nor look for an instance role: packaging makes no AWS call at all
export SLS_TELEMETRY_DISABLED=1 SLS_TRACKING_DISABLED=1 SLS_NOTIFICATIONS_MODE=off SLS_DEPRECATION_DISABLE='*'
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- Node.js and the pinned osls + plugin (package-lock.json). ---
command -v node >/dev/null && command -v npm >/dev/null \
  || die "Node.js 20.19+ and npm are required (osls 4): install them, e.g. 'apt-get install nodejs npm'"
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number);
  process.exit((maj === 20 && min >= 19) || (maj === 22 && min >= 13) || maj >= 24 ? 0 : 1);
' || die "osls 4 needs Node.js ^20.19 || ^22.13 || >=24, found $(node --version)"
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi

# --- A python3.12 (the Lambda runtime's version) for serverless-python-requirements' pip. ---
is_py312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
find_python312() {
  local candidate
  if [[ -n "${PYTHON312:-}" ]]; then
    is_py312 "$PYTHON312" || die "PYTHON312=$PYTHON312 is not a working Python 3.12"
    echo "$PYTHON312"; return
  fi
  for candidate in python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    if is_py312 "$candidate"; then command -v "$candidate"; return; fi
  done
  # pyenv's shim only runs a version that is selected: look at the installed versions themselves.
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  if command -v pyenv >/dev/null; then pyenv_root="$(pyenv root)"; fi
  for candidate in "$pyenv_root"/versions/3.12*/bin/python3.12; do
    if is_py312 "$candidate"; then echo "$candidate"; return; fi
  done
  die "python3.12 not found (the Lambda runtime is python3.12 and its wheels are fetched with it).
  Install it (e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv'),
  or point PYTHON312 at one: PYTHON312=/path/to/python3.12 make package"
}
PYTHON312="$(find_python312)"
"$PYTHON312" -m pip --version >/dev/null 2>&1 || die "$PYTHON312 has no pip: run '$PYTHON312 -m ensurepip'"
export PYTHON312

# --- Template checkers: cfn-lint from the project venv, checkov in its own venv (its pins clash with ours). ---
[[ -x "$CFN_LINT" ]] || die "$CFN_LINT not found: run 'make install' first (or 'make package')"
if [[ ! -f "$CHECKOV_VENV/.installed-$CHECKOV_VERSION" ]]; then
  step "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
  rm -rf "$CHECKOV_VENV"
  "${PYTHON:-python3}" -m venv "$CHECKOV_VENV"
  # pip's output goes to a log, shown only if the install fails.
  "$CHECKOV_VENV/bin/python" -m pip install --quiet "checkov==$CHECKOV_VERSION" > "$CHECKOV_VENV/install.log" 2>&1 \
    || { cat "$CHECKOV_VENV/install.log" >&2; die "could not install checkov $CHECKOV_VERSION"; }
  touch "$CHECKOV_VENV/.installed-$CHECKOV_VERSION"
fi

# Stage-specific checkov skips, each justified here:
#   CKV_AWS_28 (point-in-time recovery): dev and staging run without it (param pointInTimeRecovery) because their
#   state table only holds settable quotas, short-lived usage counters and expiring job ids; prod must pass it.
checkov_stage_skips() {
  case "$1" in
    prod) echo "" ;;
    *) echo "CKV_AWS_28" ;;
  esac
}

mkdir -p "$OUT_ROOT"
for stage in "${stages[@]}"; do
  out="$OUT_ROOT/$stage"
  rm -rf "$out"
  step "osls package --stage $stage -> ${out#"$ROOT"/}/"
  # Into osls's own .serverless/ (its --package option would copy every installed requirement file a second
  # time), then moved aside, so that the next stage starts clean.
  rm -rf .serverless
  npx --no-install osls package --stage "$stage"
  rm -f .serverless/requirements  # the plugin's link to its cache; the requirements are inside the zip
  mv .serverless "$out"
  [[ -f "$out/cloudformation-template-update-stack.json" && -f "$out/throttler.zip" ]] \
    || die "osls did not produce the $stage templates and zip in $out"

  step "cfn-lint $stage"
  "$CFN_LINT" --non-zero-exit-code informational \
    "$out/cloudformation-template-create-stack.json" "$out/cloudformation-template-update-stack.json" \
    || die "cfn-lint found problems in the $stage templates"
  echo "cfn-lint $stage: clean"

  step "checkov $stage"
  skip_args=()
  skips="$(checkov_stage_skips "$stage")"
  [[ -z "$skips" ]] || skip_args=(--skip-check "$skips")
  "$CHECKOV_VENV/bin/checkov" --config-file "$ROOT/.checkov.yaml" \
    -f "$out/cloudformation-template-update-stack.json" "${skip_args[@]}" \
    --output cli --output json --output-file-path "console,$out/checkov.json" \
    || die "checkov failed checks in the $stage template (see above)"
  "$CHECKOV_VENV/bin/python" - "$out/checkov.json" "$stage" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))["summary"]
print(f"checkov {sys.argv[2]}: passed={summary['passed']} failed={summary['failed']} skipped={summary['skipped']}")
sys.exit(1 if summary["failed"] or not summary["passed"] else 0)
PY
done
step "packaged and checked: ${stages[*]}"
