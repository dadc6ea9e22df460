"""utils/run.pl and utils/slurm.pl (avtk/jobs.py), run as subprocesses the way recipes call them."""
import shutil
import time

import pytest

from conftest import run


def read(path):
    return path.read_text()


def check_log(path, line, output, code=0, threads=1):
    lines = read(path).splitlines()
    assert lines[0] == f"# {line}"
    assert lines[1].startswith("# Started at ")
    assert lines[2:-2] == output
    assert lines[-2].startswith("# Accounting: time=") and lines[-2].endswith(f" threads={threads}")
    assert lines[-1].startswith(f"# Ended (code {code}) at ")


# ---- run.pl ---------------------------------------------------------------------------------

def test_job_substitution_in_log_and_command(tmp_path):
    proc = run(["run.pl", "JOB=1:3", "log/echo.JOB.log", "echo", "hello", "JOB"], cwd=tmp_path)
    assert proc.stdout == proc.stderr == ""
    for j in (1, 2, 3):
        check_log(tmp_path / f"log/echo.{j}.log", f"echo hello {j}", [f"hello {j}"])


def test_shell_syntax_words_and_quoting(tmp_path):
    # '>' and '|' act as shell syntax; a word with whitespace stays one argument.
    run(["run.pl", "SPLIT=1:2", "log/s.SPLIT.log", "echo", "part SPLIT", ">", "out.SPLIT.txt"],
        cwd=tmp_path)
    assert read(tmp_path / "out.2.txt") == "part 2\n"
    check_log(tmp_path / "log/s.2.log", "echo 'part 2' > out.2.txt", [])

    run(["run.pl", "JOB=1:2", "log/p.JOB.log", "echo", "a", "JOB", "|", "tr", "a-z", "A-Z"],
        cwd=tmp_path)
    check_log(tmp_path / "log/p.1.log", "echo a 1 | tr a-z A-Z", ["A 1"])


def test_single_job_without_range_and_resource_options(tmp_path):
    run(["run.pl", "--num-threads", "4", "--mem=2G", "--gpu", "0", "--time", "1:00:00",
         "exp/log/one.log", "echo", "JOB"], cwd=tmp_path)
    check_log(tmp_path / "exp/log/one.log", "echo JOB", ["JOB"], threads=4)


def test_failure_names_every_failed_log(tmp_path):
    proc = run(["run.pl", "JOB=1:4", "log/f.JOB.log", "bash", "-c", "echo JOB; exit $((JOB % 2 == 0))"],
               cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "run.pl: 2 / 4 failed, see log/f.2.log log/f.4.log" in proc.stderr
    assert "f.1.log" not in proc.stderr and "f.3.log" not in proc.stderr
    check_log(tmp_path / "log/f.4.log", "bash -c 'echo 4; exit $((4 % 2 == 0))'", ["4"], code=1)
    check_log(tmp_path / "log/f.3.log", "bash -c 'echo 3; exit $((3 % 2 == 0))'", ["3"], code=0)


def test_concurrency_cap(tmp_path):
    # Each job holds a lock dir while it sleeps and records how many lock dirs it saw.
    (tmp_path / "job.sh").write_text(
        "mkdir -p locks/$1; ls locks | wc -l > count.$1; sleep 0.2; rmdir locks/$1\n")
    start = time.time()
    run(["run.pl", "--max-jobs-run", "2", "JOB=1:6", "log/c.JOB.log", "bash", "job.sh", "JOB"],
        cwd=tmp_path)
    elapsed = time.time() - start
    counts = [int(read(tmp_path / f"count.{j}")) for j in range(1, 7)]
    assert max(counts) == 2, counts
    assert elapsed >= 0.6  # 3 rounds of 0.2 s


@pytest.mark.parametrize("args, message", [
    (["--foo", "1", "log/x.log", "true"], "unknown option --foo"),
    (["JOB=1:2", "log/same.log", "true"], "all jobs would write one log file log/same.log"),
    (["JOB=1:2", "log/x.JOB.log"], "expected a log file and a command"),
    (["--max-jobs-run", "many", "log/x.log", "true"], "takes a whole number"),
])
def test_usage_errors(tmp_path, args, message):
    proc = run(["run.pl", *args], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stderr


@pytest.mark.parametrize("prog", ["run.pl", "slurm.pl"])
@pytest.mark.parametrize("option, value, message", [
    ("--max-jobs-run", "0", "option --max-jobs-run must be >= 1, not 0"),
    ("--max-jobs-run", "-3", "option --max-jobs-run must be >= 1, not -3"),
    ("--num-threads", "0", "option --num-threads must be >= 1, not 0"),
    ("--gpu", "-1", "option --gpu must be >= 0, not -1"),
])
def test_numeric_options_out_of_range(tmp_path, prog, option, value, message):
    proc = run([prog, option, value, "JOB=1:2", "log/x.JOB.log", "touch", "ran.JOB"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr == f"{prog}: {message}\n"
    assert not (tmp_path / "log").exists() and not list(tmp_path.glob("ran.*"))


# ---- run.pl --gpu: one CUDA_VISIBLE_DEVICES per job ------------------------------------------

FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
[ "$1" = -L ] || exit 2
for i in 0 1 2; do echo "GPU $i: NVIDIA H200 (UUID: GPU-000$i)"; done
echo "  MIG 1g.18gb     Device  0: (UUID: MIG-0001)"
"""


@pytest.fixture
def three_gpus(tmp_path, monkeypatch):
    """A bin dir whose nvidia-smi -L lists three GPUs (and a MIG line, which is not a GPU); no CUDA_VISIBLE_DEVICES."""
    bindir = tmp_path / "smi"
    bindir.mkdir()
    (bindir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bindir / "nvidia-smi").chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return bindir


def job_devices(tmp_path, n):
    return [read(tmp_path / f"log/g.{j}.log").splitlines()[2] for j in range(1, n + 1)]


def test_gpu_jobs_get_job_modulo_the_gpus_of_nvidia_smi(tmp_path, three_gpus):
    run(["run.pl", "--gpu", "1", "JOB=1:5", "log/g.JOB.log", "printenv", "CUDA_VISIBLE_DEVICES"], cwd=tmp_path,
        extra_path=three_gpus)
    assert job_devices(tmp_path, 5) == ["0", "1", "2", "0", "1"]


def test_gpu_jobs_take_slots_of_cuda_visible_devices(tmp_path, three_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,GPU-abc")  # it wins over nvidia-smi; UUIDs pass through
    run(["run.pl", "--gpu", "2", "JOB=1:3", "log/g.JOB.log", "printenv", "CUDA_VISIBLE_DEVICES"], cwd=tmp_path,
        extra_path=three_gpus)
    assert job_devices(tmp_path, 3) == ["4,5", "6,7", "4,5"]


def test_gpu_jobs_never_share_a_gpu(tmp_path, three_gpus):
    # Each job holds a lock dir named after its GPU while it sleeps; mkdir fails if another job holds it.
    (tmp_path / "job.sh").write_text("mkdir -p locks; mkdir locks/$CUDA_VISIBLE_DEVICES || exit 1; sleep 0.2; "
                                     "rmdir locks/$CUDA_VISIBLE_DEVICES\n")
    run(["run.pl", "--gpu", "1", "JOB=1:7", "log/g.JOB.log", "bash", "job.sh"], cwd=tmp_path, extra_path=three_gpus)


@pytest.mark.parametrize("visible", [None, ""])
def test_gpu_without_gpus_is_one_error(tmp_path, monkeypatch, visible):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    proc = run(["run.pl", "--gpu", "1", "JOB=1:2", "log/g.JOB.log", "true"], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr == ("run.pl: --gpu 1: 0 GPU(s) here (CUDA_VISIBLE_DEVICES, or nvidia-smi -L when it is not "
                           "set); run without --gpu (cpu), or on a machine with the GPUs\n")
    assert not (tmp_path / "log").exists()


# ---- logs that cannot be written --------------------------------------------------------------

@pytest.mark.parametrize("prog", ["run.pl", "slurm.pl"])
def test_log_under_a_file_or_a_directory_is_one_error(tmp_path, fake_bin, prog):
    (tmp_path / "afile").write_text("")
    proc = run([prog, "JOB=1:2", "afile/x.JOB.log", "touch", "ran.JOB"], cwd=tmp_path, check=False,
               extra_path=fake_bin)
    assert (proc.returncode, proc.stderr) == (1, f"{prog}: cannot write afile/x.1.log: afile is not a directory\n")
    (tmp_path / "log/x.2.log").mkdir(parents=True)
    proc = run([prog, "JOB=1:2", "log/x.JOB.log", "touch", "ran.JOB"], cwd=tmp_path, check=False,
               extra_path=fake_bin)
    assert (proc.returncode, proc.stderr) == (1, f"{prog}: cannot write log/x.2.log: Is a directory\n")
    assert not list(tmp_path.glob("ran.*")) and not (tmp_path / "log/x.1.log").exists()  # no job started


def test_log_on_a_full_disk_is_one_error(tmp_path):
    proc = run(["run.pl", "/dev/full", "touch", "ran"], cwd=tmp_path, check=False)
    assert (proc.returncode, proc.stderr) == (1, "run.pl: cannot write /dev/full: No space left on device\n")


# ---- slurm.pl with a fake sbatch ------------------------------------------------------------

FAKE_SBATCH = r"""#!/usr/bin/env bash
# Fake sbatch: records its arguments, runs every array task in turn ($FAKE_SKIP is never run).
echo "$*" > "$(dirname "$0")/sbatch.args"
array= wait=
for a in "$@"; do
  case $a in --array=*) array=${a#--array=} ;; --wait) wait=1 ;; esac
done
script=${!#}
range=${array%%\%*}
run_all() {
  status=0
  for ((i = ${range%-*}; i <= ${range#*-}; i++)); do
    [ "$i" = "${FAKE_SKIP:-}" ] && continue
    SLURM_ARRAY_TASK_ID=$i bash "$script" > /dev/null 2>&1 || status=1
  done
  return $status
}
echo 4242
if [ -n "$wait" ]; then run_all; else run_all & fi
"""


@pytest.fixture
def fake_bin(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(FAKE_SBATCH)
    sbatch.chmod(0o755)
    return bindir


def test_slurm_success_and_sbatch_options(tmp_path, fake_bin, monkeypatch):
    monkeypatch.setenv("AVTK_SLURM_OPTS", "--partition=debug")
    work = tmp_path / "work"
    work.mkdir()
    proc = run(["slurm.pl", "--max-jobs-run", "2", "--num-threads", "4", "--mem", "2G",
                "--gpu", "1", "--time", "1:00:00", "--slurm-opts", "--qos=low --account=x",
                "JOB=1:3", "log/e.JOB.log", "echo", "hi JOB", "|", "tr", "a-z", "A-Z"],
               cwd=work, extra_path=fake_bin)
    assert proc.stdout == proc.stderr == ""
    for j in (1, 2, 3):
        lines = read(work / f"log/e.{j}.log").splitlines()
        assert lines[0] == f"# echo 'hi {j}' | tr a-z A-Z"
        assert lines[1].startswith("# Started at ")
        assert lines[2] == f"HI {j}"
        assert lines[3] == "# Accounting: time=0 threads=4"
        assert lines[4].startswith("# Ended (code 0) at ")
    args = read(fake_bin / "sbatch.args").strip()
    for expected in ("--parsable", "--wait", "--array=1-3%2", "--job-name e", "--cpus-per-task 4",
                     "--mem 2G", "--gres=gpu:1", "--time 1:00:00",
                     "--partition=debug --qos=low --account=x"):
        assert expected in args, (expected, args)
    assert args.endswith("log/q/e.sh")


def test_slurm_failure_and_missing_task(tmp_path, fake_bin, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    cmd = ["slurm.pl", "JOB=1:4", "log/f.JOB.log", "test", "JOB", "-ne", "2"]
    proc = run(cmd, cwd=work, extra_path=fake_bin, check=False)
    assert proc.returncode != 0
    assert "slurm.pl: 1 / 4 failed, see log/f.2.log" in proc.stderr
    assert read(work / "log/f.2.log").splitlines()[-1].startswith("# Ended (code 1) at ")

    # A task that never ran (no exit code file, even a stale one from the last run) is a failure.
    monkeypatch.setenv("FAKE_SKIP", "3")
    proc = run(cmd, cwd=work, extra_path=fake_bin, check=False)
    assert "slurm.pl: 2 / 4 failed, see log/f.2.log log/f.3.log" in proc.stderr


def test_slurm_single_job(tmp_path, fake_bin):
    run(["slurm.pl", "log/one.log", "echo", "one"], cwd=tmp_path, extra_path=fake_bin)
    check_log(tmp_path / "log/one.log", "echo one", ["one"])
    assert "--array=1-1 " in read(fake_bin / "sbatch.args")
    assert "--gres" not in read(fake_bin / "sbatch.args")


def test_slurm_gpu_requests_gres_and_leaves_the_devices_to_slurm(tmp_path, fake_bin, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi here: Slurm, not slurm.pl, picks the GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    run(["slurm.pl", "--gpu", "2", "JOB=1:2", "log/g.JOB.log", "echo", "JOB"], cwd=tmp_path, extra_path=fake_bin)
    assert "--gres=gpu:2" in read(fake_bin / "sbatch.args").split()
    run(["slurm.pl", "--gpu", "0", "JOB=1:2", "log/g.JOB.log", "echo", "JOB"], cwd=tmp_path, extra_path=fake_bin)
    assert "--gres" not in read(fake_bin / "sbatch.args")


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a real sbatch is installed")
def test_slurm_without_sbatch(tmp_path):
    proc = run(["slurm.pl", "JOB=1:2", "log/x.JOB.log", "true"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "slurm.pl: sbatch not found on PATH" in proc.stderr
    assert not (tmp_path / "log").exists()
