# How parallel jobs run: utils/run.pl on this machine, or utils/slurm.pl on a Slurm cluster, e.g.
#   export cmd="slurm.pl --max-jobs-run 32"  train_cmd="slurm.pl --gpu 1 --num-threads 8 --mem 32G"
export cmd="run.pl"
export train_cmd="run.pl"
