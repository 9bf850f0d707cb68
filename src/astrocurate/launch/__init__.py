"""The launch layer: how astrocurate's steps are started as scripts and SLURM jobs.

- :mod:`~astrocurate.launch.slurm`: the ``--slurm_*`` options of a step
  (:class:`SlurmOptions`), validated in one place.
- :mod:`~astrocurate.launch.environment`: the tracking store and experiment of a script;
  the one place where a tracking URI is written into a file, never one with credentials.
- :mod:`~astrocurate.launch.sbatch`: the one renderer of every script astrocurate writes
  (``run.sh`` and the level jobs of a clustering, the cutouts job array, the features job
  array and its finishing job), the bash functions that submit jobs, sbatch's log paths.
- :mod:`~astrocurate.launch.shards`: the ``K/N`` parser of ``--shard``.
- :mod:`~astrocurate.launch.workers`: the one process pool of the steps that fan out by
  file on one machine (cutting, source finding); a worker that dies stops it in one line.

The launch layer knows no stage: the stages describe their scripts and call it.
"""

from astrocurate.launch.environment import (
    absolute_tracking_uri,
    script_environment,
    tracking_environment,
)
from astrocurate.launch.sbatch import (
    Job,
    Script,
    cli_command,
    render_script,
    sbatch_path_pattern,
    shell_words,
    submit_functions,
)
from astrocurate.launch.shards import parse_shard, parse_shard_spec, shard_from_environment
from astrocurate.launch.slurm import (
    SLURM_FLAGS,
    SLURM_NAME,
    SlurmOptions,
    add_slurm_arguments,
    time_limit_seconds,
)

__all__ = [
    "SLURM_FLAGS",
    "SLURM_NAME",
    "Job",
    "Script",
    "SlurmOptions",
    "absolute_tracking_uri",
    "add_slurm_arguments",
    "cli_command",
    "parse_shard",
    "parse_shard_spec",
    "render_script",
    "sbatch_path_pattern",
    "script_environment",
    "shard_from_environment",
    "shell_words",
    "submit_functions",
    "time_limit_seconds",
    "tracking_environment",
]
