# How parallel jobs run: utils/run.pl on this machine, or utils/slurm.pl on a Slurm cluster, e.g.
#   export cmd="slurm.pl --max-jobs-run 32"  train_cmd="slurm.pl --gpu 1 --num-threads 8 --mem 32G"
# --gpu N gives each job N GPUs of its own: run.pl sets CUDA_VISIBLE_DEVICES per job (JOB modulo the GPUs of
# nvidia-smi -L, or of an existing CUDA_VISIBLE_DEVICES list), slurm.pl asks Slurm for --gres=gpu:N.
export cmd="run.pl"
export train_cmd="run.pl"
