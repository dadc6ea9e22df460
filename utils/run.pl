#!/usr/bin/env bash
# run.pl [options] [JOB=1:N] LOG COMMAND...: run jobs on this machine (see avtk/jobs.py).
exec "${PYTHON:-python3}" -m avtk.jobs local "$@"
