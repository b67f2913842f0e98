#!/usr/bin/env bash
# Start MixMIM pretraining on several GPU hosts: one JAX process per host, all GPUs
# of a host in that process, host 0 the jax.distributed coordinator.
#
#   MIXMIM_HOSTS="gpu-0 gpu-1" MIXMIM_WORKDIR=gs://my-bucket/mixmim/base \
#   MIXMIM_DATA_DIR=gs://my-bucket/tensorflow_datasets \
#     launch/gpu_multihost.sh [--dry-run] [-- --config.some.flag=value ...]
#
# Each host must have this project checked out at MIXMIM_REMOTE_DIR (default: the
# same path as here) at the same commit as here (checked before starting), and a
# Python environment at MIXMIM_REMOTE_PYTHON (default: $MIXMIM_REMOTE_DIR/.venv/bin/python).
# The trainer reads MIXMIM_COORDINATOR_ADDRESS / MIXMIM_NUM_PROCESSES /
# MIXMIM_PROCESS_ID and calls jax.distributed.initialize with them.
# Logs: $HOME/mixmim/logs/train-process-<i>.log on host i; pid next to it.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Flags (each overrides the environment variable in brackets):
  --hosts "H0 H1 ..."   [MIXMIM_HOSTS]        ssh destinations; H0 coordinates
  --port N              [MIXMIM_COORDINATOR_PORT, default 8476]
  --coordinator-host H  [MIXMIM_COORDINATOR_HOST, default H0 without user@]
                        an address of host 0 the other hosts can reach
  --workdir DIR         [MIXMIM_WORKDIR]      gs://... or a filesystem all hosts share
  --data-dir DIR        [MIXMIM_DATA_DIR]     tfds data_dir
  --config FILE         [MIXMIM_CONFIG, default configs/base_pretrain.py]
  --remote-dir DIR      [MIXMIM_REMOTE_DIR]   checkout on every host
  --python PATH         [MIXMIM_REMOTE_PYTHON]
  --commit SHA          [MIXMIM_COMMIT, default: HEAD of this checkout]
  --dry-run             print the ssh commands instead of running them
EOF
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
hosts="${MIXMIM_HOSTS:-}"
port="${MIXMIM_COORDINATOR_PORT:-8476}"
coordinator_host="${MIXMIM_COORDINATOR_HOST:-}"
workdir="${MIXMIM_WORKDIR:-}"
data_dir="${MIXMIM_DATA_DIR:-}"
config="${MIXMIM_CONFIG:-configs/base_pretrain.py}"
remote_dir="${MIXMIM_REMOTE_DIR:-$here}"
python="${MIXMIM_REMOTE_PYTHON:-}"
commit="${MIXMIM_COMMIT:-}"
dry_run=0
extra=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "flag $1 needs a value."; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;   # --flag=value
    --dry-run) dry_run=1 ;;
    --hosts) need_value "$@"; hosts="$2"; shift ;;
    --port) need_value "$@"; port="$2"; shift ;;
    --coordinator-host) need_value "$@"; coordinator_host="$2"; shift ;;
    --workdir) need_value "$@"; workdir="$2"; shift ;;
    --data-dir) need_value "$@"; data_dir="$2"; shift ;;
    --config) need_value "$@"; config="$2"; shift ;;
    --remote-dir) need_value "$@"; remote_dir="$2"; shift ;;
    --python) need_value "$@"; python="$2"; shift ;;
    --commit) need_value "$@"; commit="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'; expected one of the flags in --help, or -- before trainer flags." ;;
  esac
  shift
done

# --- check the inputs ----------------------------------------------------------
read -r -a host_list <<< "$hosts"
n=${#host_list[@]}
[[ $n -ge 1 ]] || die "MIXMIM_HOSTS is not set; pass --hosts \"HOST0 HOST1 ...\" (ssh destinations, the first one coordinates)."
[[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] \
  || die "coordinator port '$port' is not valid; expected a number from 1 to 65535."
[[ -n "$workdir" ]] || die "MIXMIM_WORKDIR is not set; pass --workdir (gs://BUCKET/PATH, or a directory every host shares)."
[[ -n "$data_dir" ]] || die "MIXMIM_DATA_DIR is not set; pass --data-dir (the tfds data_dir holding imagenet2012)."
if [[ "$workdir" == gs://* && ! "$workdir" =~ ^gs://[a-z0-9][-a-z0-9_.]+[a-z0-9](/.*)?$ ]]; then
  die "workdir '$workdir' is not a valid GCS path; expected gs://BUCKET/PATH."
fi
if [[ $n -gt 1 && "$workdir" != gs://* ]]; then
  echo "warning: workdir '$workdir' is not on GCS; all $n hosts must see it as one shared directory." >&2
fi
if [[ -z "$commit" ]]; then
  commit="$(git -C "$here" rev-parse --verify --quiet 'HEAD^{commit}')" \
    || die "cannot resolve HEAD in '$here'; expected a git checkout with a commit (or pass --commit SHA)."
  if [[ -n "$(git -C "$here" status --porcelain --untracked-files=no)" ]]; then
    echo "warning: '$here' has uncommitted changes; the hosts must be at commit $commit without them." >&2
  fi
fi
[[ "$commit" =~ ^[0-9a-f]{40}$ ]] || die "commit '$commit' is not a full 40-hex-digit commit id."
python="${python:-$remote_dir/.venv/bin/python}"

# --- one ssh command per host ---------------------------------------------------
coordinator_host="${coordinator_host:-${host_list[0]#*@}}"
coordinator="$coordinator_host:$port"
train_args=("$python" -m mixmim_jax.main "--config=$config" "--workdir=$workdir"
            "--config.data.data_dir=$data_dir" "${extra[@]}")
printf -v train_cmd '%q ' "${train_args[@]}"
printf -v q_dir '%q' "$remote_dir"

for i in "${!host_list[@]}"; do
  host="${host_list[$i]}"
  log="\"\$HOME/mixmim/logs/train-process-$i.log\""
  remote="set -e; cd $q_dir; "
  remote+="if [ \"\$(git rev-parse HEAD)\" != $commit ]; then echo \"\$(hostname): checkout is not at commit $commit\" >&2; exit 1; fi; "
  remote+="mkdir -p \"\$HOME/mixmim/logs\"; "
  remote+="MIXMIM_COORDINATOR_ADDRESS=$coordinator MIXMIM_NUM_PROCESSES=$n MIXMIM_PROCESS_ID=$i "
  remote+="setsid nohup ${train_cmd}>> $log 2>&1 < /dev/null & echo \$! > \"\$HOME/mixmim/logs/train-process-$i.pid\""
  cmd=(ssh "$host" "$remote")
  if [[ $dry_run -eq 1 ]]; then
    echo "${cmd[*]@Q}"
  else
    echo "+ process $i on $host" >&2
    "${cmd[@]}"
  fi
done
