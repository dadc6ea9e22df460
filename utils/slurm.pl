#!/usr/bin/env bash
# slurm.pl [options] [JOB=1:N] LOG COMMAND...: run jobs as one Slurm array job (see avtk/jobs.py).
exec "${PYTHON:-python3}" -m avtk.jobs slurm "$@"
