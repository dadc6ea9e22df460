"""Kaldi-style job runners behind utils/run.pl (local) and utils/slurm.pl (one Slurm array job).

usage: run.pl   [options] [VAR=START:END] LOG COMMAND [ARGS...]
       slurm.pl [options] [VAR=START:END] LOG COMMAND [ARGS...]

e.g.   run.pl --max-jobs-run 4 JOB=1:8 exp/log/extract.JOB.log \\
           avtk extract --part JOB/8 data/train exp/emb.JOB.ark

The command words are joined into one bash command line: a word without whitespace is kept as
it is (so `\\|` or `'>'` from the caller act as shell syntax), a word with whitespace is quoted.
Every occurrence of VAR in LOG and in the command is replaced by the job index. Each job's log
starts with `# <command line>` and `# Started at <date>`, holds the command's stdout and stderr,
and ends with `# Accounting: time=<s> threads=<n>` and `# Ended (code <rc>) at <date>`.
If any job fails the runner exits 1 and names every failed job's log on stderr. A log that
cannot be written (a directory, under a file, a full disk) is one error line naming it, exit 1;
every log path is checked before the first job starts.

options:
  --max-jobs-run K   at most K jobs at once (local default: the number of CPUs;
                     slurm: the array throttle, `--array=1-N%K`)
  --num-threads N    slurm: --cpus-per-task N      (local: accepted, ignored)
  --mem X            slurm: --mem X                (local: accepted, ignored)
  --gpu N            slurm: --gres=gpu:N if N > 0
                     local: each job sees N GPUs of its own through CUDA_VISIBLE_DEVICES: the GPUs
                     (those listed in CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`) are cut
                     into slots of N, job JOB takes slot (JOB-1) modulo the slots, and waits while
                     an earlier job holds it, so no two jobs share a GPU
  --time T           slurm: --time T               (local: accepted, ignored)
  --slurm-opts "..." slurm: extra sbatch options, after those of $AVTK_SLURM_OPTS
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open, make_dirs, write_error

PROGS = {"local": "run.pl", "slurm": "slurm.pl"}
OPTIONS = {"--max-jobs-run": int, "--num-threads": int, "--mem": str, "--gpu": int,
           "--time": str, "--slurm-opts": str}
MINIMUM = {"--max-jobs-run": 1, "--num-threads": 1, "--gpu": 0}  # the least value of each numeric option
RANGE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\d+):(\d+)")


@dataclass
class Spec:
    """A parsed runner command line: options, the job range, the log path and the command."""
    log: str
    words: List[str]
    var: Optional[str] = None  # the job variable (e.g. JOB); None for a single unnamed job
    first: int = 1
    last: int = 1
    options: dict = field(default_factory=dict)

    @property
    def ids(self):
        return range(self.first, self.last + 1)

    @property
    def line(self):
        return command_line(self.words)

    def sub(self, text, job):
        """`text` with the job variable replaced by `job`."""
        return text.replace(self.var, str(job)) if self.var else text

    @property
    def threads(self):
        return self.options.get("num_threads", 1)


def command_line(words):
    """Join words into a bash command line; only words with whitespace (or empty ones) are quoted."""
    return " ".join(shlex.quote(w) if not w or re.search(r"\s", w) else w for w in words)


def parse_args(argv):
    """Parse `[options] [VAR=START:END] LOG COMMAND...` into a Spec (AvtkError on bad usage)."""
    options, i = {}, 0
    while i < len(argv) and argv[i].startswith("--"):
        name, eq, value = argv[i].partition("=")
        if name not in OPTIONS:
            raise AvtkError(f"unknown option {name}")
        if not eq:
            i += 1
            if i == len(argv):
                raise AvtkError(f"option {name} needs a value")
            value = argv[i]
        try:
            options[name[2:].replace("-", "_")] = OPTIONS[name](value)
        except ValueError:
            raise AvtkError(f"option {name} takes a whole number, not {value!r}") from None
        if name in MINIMUM and options[name[2:].replace("-", "_")] < MINIMUM[name]:
            raise AvtkError(f"option {name} must be >= {MINIMUM[name]}, not {value}")
        i += 1
    rest, var, first, last = argv[i:], None, 1, 1
    match = RANGE.fullmatch(rest[0]) if rest else None
    if match:
        var, first, last = match[1], int(match[2]), int(match[3])
        rest = rest[1:]
        if last < first:
            raise AvtkError(f"empty job range {var}={first}:{last}")
    if len(rest) < 2:
        raise AvtkError("expected a log file and a command (see --help)")
    if var and last > first and var not in rest[0]:
        raise AvtkError(f"all jobs would write one log file {rest[0]} (put {var} in its name)")
    return Spec(log=rest[0], words=rest[1:], var=var, first=first, last=last, options=options)


def now():
    return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def report(prog, spec, codes):
    """Exit status for the whole run: 0, or 1 with every failed job's log named on stderr."""
    failed = [spec.sub(spec.log, j) for j in spec.ids if codes.get(j) != 0]
    if not failed:
        return 0
    print(f"{prog}: {len(failed)} / {len(spec.ids)} failed, see {' '.join(failed)}", file=sys.stderr)
    return 1


# ---- local ----------------------------------------------------------------------------------

def check_logs(spec):
    """AvtkError ``cannot write LOG: REASON`` unless every job's log can be created (its directory made)."""
    for job in spec.ids:
        log = spec.sub(spec.log, job)
        if os.path.isdir(log):
            raise AvtkError(f"cannot write {log}: Is a directory")
        make_dirs(os.path.dirname(log) or ".", what=log)


def run_job(line, log, threads, env=None):
    """Run one command line under bash with its output in `log`; return its exit code.

    `env`: the environment (default: ours). An OSError on the log is AvtkError ``cannot write LOG: REASON``."""
    try:
        with open(log, "w") as f:
            f.write(f"# {line}\n# Started at {now()}\n")
        start = time.time()
        with open(log, "a") as f:  # O_APPEND: the command's output and our footer never overlap
            rc = subprocess.call(["bash", "-c", line], stdin=subprocess.DEVNULL,
                                 stdout=f, stderr=subprocess.STDOUT, env=env)
            f.write(f"# Accounting: time={round(time.time() - start)} threads={threads}\n"
                    f"# Ended (code {rc}) at {now()}\n")
    except OSError as err:
        raise write_error(log, err) from None
    return rc


def visible_gpus():
    """The GPUs jobs may use: the entries of CUDA_VISIBLE_DEVICES when it is set, else 0..n-1 for the n
    `GPU i: ...` lines of `nvidia-smi -L` (none if nvidia-smi is missing or fails)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i in range(sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")))]


def gpu_slots(per_job):
    """The GPUs cut into slots of `per_job` (comma-joined CUDA_VISIBLE_DEVICES values); AvtkError if fewer."""
    gpus = visible_gpus()
    if len(gpus) < per_job:
        raise AvtkError(f"--gpu {per_job}: {len(gpus)} GPU(s) here "
                        "(CUDA_VISIBLE_DEVICES, or nvidia-smi -L when it is not set); "
                        "run without --gpu (cpu), or on a machine with the GPUs")
    return [",".join(gpus[i:i + per_job]) for i in range(0, len(gpus) - per_job + 1, per_job)]


def run_local(spec, slots=None):
    """Run the jobs on this machine, at most --max-jobs-run at a time; return {job: exit code}.

    With `slots` (`gpu_slots(N)` for --gpu N), job j runs with CUDA_VISIBLE_DEVICES set to slot
    (j - 1) % len(slots), holding that slot's lock while it runs."""
    check_logs(spec)
    workers = spec.options.get("max_jobs_run") or os.cpu_count() or 1
    line = spec.line
    locks = [threading.Lock() for _ in slots or ()]

    def one(job):
        if slots is None:
            return run_job(spec.sub(line, job), spec.sub(spec.log, job), spec.threads)
        k = (job - spec.first) % len(slots)
        with locks[k]:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=slots[k])
            return run_job(spec.sub(line, job), spec.sub(spec.log, job), spec.threads, env)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(spec.ids, pool.map(one, spec.ids)))


# ---- slurm ----------------------------------------------------------------------------------

TASK_SCRIPT = """\
#!/usr/bin/env bash
# Written by slurm.pl: one task of a Slurm array job; the job index is $SLURM_ARRAY_TASK_ID.
cd {cwd} || exit 1
job=${{SLURM_ARRAY_TASK_ID:?slurm.pl: SLURM_ARRAY_TASK_ID is not set}}
line={line}
log={log}
{substitute}mkdir -p "$(dirname "$log")"
printf '# %s\\n# Started at %s\\n' "$line" "$(date)" > "$log"
start=$SECONDS
bash -c "$line" < /dev/null >> "$log" 2>&1
rc=$?
printf '# Accounting: time=%s threads={threads}\\n# Ended (code %s) at %s\\n' \\
    $((SECONDS - start)) $rc "$(date)" >> "$log"
echo $rc > {rc_prefix}"$job"
exit $rc
"""


def job_name(spec):
    """A short name for the array job and its files: the log's basename without VAR and .log."""
    base = os.path.basename(spec.log)
    if spec.var:
        base = re.sub(r"\.?" + re.escape(spec.var), "", base)
    return re.sub(r"\.log$", "", base) or "job"


def run_slurm(spec):
    """Submit the jobs as one Slurm array job, wait for it, and return {job: exit code}."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise AvtkError("sbatch not found on PATH: Slurm is not available here "
                        "(run the recipe with run.pl to use this machine)")
    check_logs(spec)
    name = job_name(spec)
    qdir = os.path.join(os.path.dirname(spec.sub(spec.log, spec.first)), "q")
    make_dirs(qdir)
    rc_prefix = os.path.join(qdir, f"{name}.rc.")
    for job in spec.ids:  # a stale exit code must never pass for this run's
        if os.path.exists(rc_prefix + str(job)):
            os.remove(rc_prefix + str(job))

    substitute = ""
    if spec.var:
        substitute = (f'line=${{line//{spec.var}/$job}}\n'
                      f'log=${{log//{spec.var}/$job}}\n')
    script = os.path.join(qdir, f"{name}.sh")
    with atomic_open(script) as f:
        f.write(TASK_SCRIPT.format(
            cwd=shlex.quote(os.getcwd()), line=shlex.quote(spec.line), log=shlex.quote(spec.log),
            substitute=substitute, threads=spec.threads, rc_prefix=shlex.quote(rc_prefix)))
    os.chmod(script, 0o755)

    opts = spec.options
    array = f"{spec.first}-{spec.last}"
    if opts.get("max_jobs_run"):
        array += f"%{opts['max_jobs_run']}"
    cmd = [sbatch, "--parsable", "--wait", f"--array={array}", "--job-name", name,
           "--output", os.path.join(qdir, f"{name}.%a.out")]
    if "num_threads" in opts:
        cmd += ["--cpus-per-task", str(opts["num_threads"])]
    if "mem" in opts:
        cmd += ["--mem", opts["mem"]]
    if opts.get("gpu"):
        cmd += [f"--gres=gpu:{opts['gpu']}"]
    if "time" in opts:
        cmd += ["--time", opts["time"]]
    cmd += shlex.split(os.environ.get("AVTK_SLURM_OPTS", "")) + shlex.split(opts.get("slurm_opts", ""))
    cmd.append(script)
    # sbatch --wait exits non-zero when a task fails; the per-task exit code files decide.
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    codes = {}
    for job in spec.ids:
        try:
            with open(rc_prefix + str(job)) as f:
                codes[job] = int(f.read().strip())
        except (OSError, ValueError):
            codes[job] = None  # the task never finished: counted as failed
    return codes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in PROGS:
        print("usage: python -m avtk.jobs {local,slurm} [options] [VAR=START:END] LOG COMMAND...",
              file=sys.stderr)
        return 2
    prog, argv = PROGS[argv[0]], argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 1
    try:
        spec = parse_args(argv)
        local = prog == "run.pl"
        slots = gpu_slots(spec.options["gpu"]) if local and spec.options.get("gpu") else None
        codes = run_local(spec, slots) if local else run_slurm(spec)
    except AvtkError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return report(prog, spec, codes)


if __name__ == "__main__":
    sys.exit(main())
