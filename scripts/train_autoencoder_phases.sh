#!/usr/bin/env bash
# Run the three DC-AE phases in order, each starting from the previous phase's EMA weights.
#   scripts/train_autoencoder_phases.sh VARIANT DATA OUT [NPROC] [extra args for every phase...]
#   e.g. scripts/train_autoencoder_phases.sh tiny-f32c32-sana shapes runs/ae 1 --steps 500 --batch-size 8
# Resolutions, learning rates and the rest default per phase (dcae_deploy/train/autoencoder.py DEFAULT_PHASES);
# extra args override them for every phase. NPROC > 1 runs each phase under torchrun.
set -euo pipefail
variant=${1:?variant}; data=${2:?data}; out=${3:?out}; nproc=${4:-1}; shift $(( $# < 4 ? $# : 4 ))
python=${PYTHON:-python}
if [[ "$nproc" -gt 1 ]]; then
  launch=("$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m dcae_deploy.train)
else
  launch=("$python" -m dcae_deploy.train)
fi
init=()
for phase in low_res_full high_res_latent_adaptation low_res_local_refinement; do
  "${launch[@]}" autoencoder --phase "$phase" --variant "$variant" --data "$data" --out "$out/$phase" "${init[@]}" "$@"
  init=(--init "$out/$phase/final/ema")
done
echo "final autoencoder: $out/low_res_local_refinement/final/ema"
