#!/usr/bin/env bash
# The GPU checks of one lent machine, in one go (each part has its own time limit and log; a failed part does
# not stop the others). Run from the repository root, with avtk importable (PYTHONPATH or installed):
#   bench/gpu_checks.sh [OUTDIR]
# 1. correctness on CUDA: the fbank GPU/CPU test, a TorchScript export traced on the CPU and run on the GPU,
#    ECAPA's pooling under fp16/bf16 autocast on CUDA with |h| >= 256;
# 2. bench/train_throughput.sh: ECAPA-L training samples/s in fp32, bf16, fp16 and a 1-GPU torchrun (NCCL);
# 3. bench/vox1o.py --device cuda: a Vox1-O-sized evaluation against the seed's procedure;
# 4. torchrun with 2 processes on 1 GPU (NCCL): expected to be refused, with avtk's one-line error.
set -uo pipefail
out=${1:-${OUT:-/tmp/avtk_gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, report status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s (limit $limit)"
  tail -n "${TAILN:-15}" "$out/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
nproc

cat > /tmp/avtk_cuda_checks.py <<'PY'
import os, subprocess, sys, tempfile
import torch
from avtk.embed import save_model
from avtk.models import build_network
from avtk.train.config import load_config
work = tempfile.mkdtemp()
torch.manual_seed(0)
cfg = load_config(None, ['model.encoder_args={"channels": 512, "embed_dim": 192}'])
net = build_network(cfg["model"]).eval()
save_model(f"{work}/m.pt", net.state_dict(), cfg, ["spk"])
proc = subprocess.run([sys.executable, "-m", "avtk.cli", "export", "--model", f"{work}/m.pt", f"{work}/m.ts"],
                      capture_output=True, text=True)
print("export:", proc.returncode, proc.stderr.strip().splitlines()[-1:] if proc.stderr else "")
ts = torch.jit.load(f"{work}/m.ts", map_location="cuda")
wave = torch.rand(3, 32000) - 0.5
lengths = torch.tensor([32000, 20000, 9000])
with torch.no_grad():
    gpu = ts(wave.cuda(), lengths.cuda()).cpu()
    ref = torch.cat([net(wave[i:i + 1, :int(n)]) for i, n in enumerate(lengths)])
print(f"torchscript on cuda vs eager cpu: max |diff| {(gpu - ref).abs().max().item():.2e}")
pool = net.encoder if hasattr(net, "encoder") else net
x = (torch.randn(2, 80, 300) * 300).cuda()
enc = build_network(cfg["model"]).cuda().eval()
for dtype in (torch.float16, torch.bfloat16):
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        e = enc.encoder(x) if hasattr(enc, "encoder") else enc(x)
    print(f"ECAPA encoder on features x300 under {dtype} autocast: finite={bool(torch.isfinite(e).all())}")
PY

part cuda_checks 90 "$py" /tmp/avtk_cuda_checks.py
part fbank_gpu_test 90 "$py" -m pytest -q -p no:cacheprovider tests/test_fbank.py -k gpu
SPEAKERS=${SPEAKERS:-300} REPEAT=${REPEAT:-10} PYTHON="$py" part train_throughput 300 bench/train_throughput.sh /tmp/avtk_train_bench
part vox1o 240 "$py" bench/vox1o.py --device cuda --work /tmp/avtk_vox1o
cat > /tmp/two_on_one.yaml <<'YAML'
model: {encoder: ecapa_tdnn, encoder_args: {channels: 64, embed_dim: 32}}
data: {batch_size: 16, num_workers: 0}
runtime: {epochs: 1, device: cuda}
YAML
part nccl_two_on_one 60 "$py" -m torch.distributed.run --standalone --nproc_per_node 2 -m avtk.cli train \
  --config /tmp/two_on_one.yaml --train-data /tmp/avtk_train_bench/data/train --exp /tmp/two_on_one
tar czf "$out/train_logs.tgz" -C /tmp/avtk_train_bench $(cd /tmp/avtk_train_bench && ls *.log) 2>/dev/null
echo "== summary"
grep -h -A8 "ECAPA-L C=1024" "$out/train_throughput.log"
grep -h -A6 "^job (whole" "$out/vox1o.log"
