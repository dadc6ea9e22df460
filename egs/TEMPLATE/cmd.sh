# How parallel jobs run: run.pl on this machine, or slurm.pl on a Slurm cluster (both from avtk's utils/, on PATH
# after path.sh), e.g.   export cmd="slurm.pl --max-jobs-run 32"
# --gpu N gives each job N GPUs of its own: run.pl sets CUDA_VISIBLE_DEVICES per job (JOB modulo the GPUs of
# nvidia-smi -L, or of an existing CUDA_VISIBLE_DEVICES list), slurm.pl asks Slurm for --gres=gpu:N.
export cmd="run.pl"
