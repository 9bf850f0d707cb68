#!/usr/bin/env bash
# Clustering run <RUN_ID>, prepared by astrocurate (guide step 4a).
# Submits one SLURM job per level (3), chained with --dependency=afterok,
# then waits for the last one; --no-wait returns at once. Prints the job IDs.
# Run it again after a failure: finished levels are kept, a level resumes from its
# checkpoints. Job logs: logs/level_<L>-<job>.out. While waiting it asks squeue
# every ASTROCURATE_SLURM_POLL seconds (default 10). If sbatch refuses a job, the
# jobs already submitted are cancelled and it stops with sbatch's message.
set -euo pipefail
cd <DIR>
export MLFLOW_TRACKING_URI=<TRACKING_URI>
export MLFLOW_EXPERIMENT_NAME=<EXPERIMENT>
export PYTHONPATH=<SRC>"${PYTHONPATH:+:$PYTHONPATH}"
wait_for_jobs=1
for arg in "$@"; do
    case "$arg" in
        --no-wait) wait_for_jobs=0 ;;
        *) echo "run.sh: unknown option $arg (only --no-wait)" >&2; exit 2 ;;
    esac
done
if ! command -v sbatch >/dev/null; then
    echo "run.sh: sbatch not found; this experiment was prepared for SLURM (--slurm_*" \
         "flags): run it where SLURM is, or prepare it again without them" >&2
    exit 1
fi
level_gpus=([1]=1 [2]=1 [3]=1)  # GPUs per node of each level's job (ngpus_per_node)
gres_hint() {  # gres_hint WHAT: the hint for a refused GPU request
    local level=${1#the job of level }
    level=${level%% *}
    echo "level $level asks for ${level_gpus[$level]} GPU(s) per node (config key" \
         "ngpus_per_node); on a partition without GPUs set ngpus_per_node: 0"
}
submitted=()
submit() {  # submit WHAT [sbatch options] FILE [ARGS]: submit a job, keep its ID in submitted
    local what=$1 out id
    shift
    if ! out=$(sbatch --parsable "$@" 2>&1); then refused "$what" "$out"; fi
    id=${out##*$'\n'}
    id=${id%%;*}
    if [[ ! "$id" =~ ^[0-9]+$ ]]; then refused "$what" "$out"; fi
    if [[ "$out" == *$'\n'* ]]; then echo "${out%$'\n'*}" >&2; fi  # sbatch's warnings
    submitted+=("$id")
}
refused() {  # refused WHAT MESSAGE: cancel the jobs submitted so far, explain, exit 1
    local what=$1 message=${2//$'\n'/ } hint cancelled=""
    case "${message,,}" in
        *gres*|*"generic resource"*) hint=$(gres_hint "$what") ;;
        *account*|*association*)
            hint="check --slurm_account (sacctmgr show associations user=\$USER lists yours)" ;;
        *partition*)
            hint="check --slurm_partition (sinfo lists the partitions)" ;;
        *qos*)
            hint="check --slurm_qos (sacctmgr show qos lists them)" ;;
        *"time limit"*)
            hint="lower --slurm_time to the partition's limit (sinfo -o '%P %l' shows it)" ;;
        *)
            hint="change what sbatch objects to" ;;
    esac
    if ((${#submitted[@]})); then
        scancel "${submitted[@]}" 2>/dev/null || true
        cancelled=" (cancelled the jobs already submitted: ${submitted[*]})"
    fi
    echo "run.sh: sbatch refused $what: $message. Hint: $hint; change it in your config file or step 4a's --slurm_* flags, prepare again with scripts/4_clustering.py (it reuses this run, which stays prepared), then run ./run.sh again$cancelled" >&2
    exit 1
}
submit 'the job of level 1 (slurm/level_1.sbatch)' slurm/level_1.sbatch
submit 'the job of level 2 (slurm/level_2.sbatch)' --dependency=afterok:"${submitted[-1]}" slurm/level_2.sbatch
submit 'the job of level 3 (slurm/level_3.sbatch)' --dependency=afterok:"${submitted[-1]}" slurm/level_3.sbatch
echo "run.sh: submitted SLURM jobs ${submitted[*]} (logs in logs/)" >&2
echo "${submitted[*]}"
if [[ "$wait_for_jobs" == 0 ]]; then exit 0; fi
poll="${ASTROCURATE_SLURM_POLL:-10}"
while squeue --noheader --jobs="${submitted[-1]}" 2>/dev/null | grep -q .; do
    sleep "$poll"
done
exec <PYTHON> -m astrocurate.cli clustering-status <DIR>
