# How parallel jobs run: utils/run.pl on this machine, or utils/slurm.pl on a Slurm cluster, e.g.
#   export cmd="slurm.pl --max-jobs-run 32"  train_cmd="slurm.pl --gpu 1 --num-threads 8 --mem 32G"
# run.sh adds --gpu 1 to $cmd for extraction jobs when --device cuda: run.pl then gives each job its own GPU
# (CUDA_VISIBLE_DEVICES: JOB modulo the GPUs of nvidia-smi -L, or of an existing CUDA_VISIBLE_DEVICES list,
# and never two jobs on one GPU at once); slurm.pl asks Slurm for --gres=gpu:1 per job.
export cmd="run.pl"
export train_cmd="run.pl"
