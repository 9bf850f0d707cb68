#!/usr/bin/env bash
# Clustering run <RUN_ID>, prepared by astrocurate (guide step 4a).
# Submits one SLURM job per level (3), chained with --dependency=afterok,
# then waits for the last one; --no-wait returns at once. Prints the job IDs.
# Run it again after a failure: finished levels are kept, a level resumes from its
# checkpoints. Job logs: logs/level_<L>-<job>.out. While waiting it asks squeue
# every ASTROCURATE_SLURM_POLL seconds (default 10).
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
submit() { local id; id=$(sbatch --parsable "$@"); echo "${id%%;*}"; }
job1=$(submit slurm/level_1.sbatch)
job2=$(submit --dependency=afterok:"$job1" slurm/level_2.sbatch)
job3=$(submit --dependency=afterok:"$job2" slurm/level_3.sbatch)
echo "run.sh: submitted SLURM jobs $job1 $job2 $job3 (logs in logs/)" >&2
echo "$job1 $job2 $job3"
if [[ "$wait_for_jobs" == 0 ]]; then exit 0; fi
poll="${ASTROCURATE_SLURM_POLL:-10}"
while squeue --noheader --jobs="$job3" 2>/dev/null | grep -q .; do
    sleep "$poll"
done
exec <PYTHON> -m astrocurate.cli clustering-status <DIR>
