#!/usr/bin/env bash
# End-to-end demo on a generated cohort, on CPU, in a few minutes. Run through `make demo`.
# Everything is written under $DEMO_DIR (default ./demo); the commands are the ones users type.
set -euo pipefail
DEMO_DIR="${DEMO_DIR:-demo}"
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
cd "$DEMO_DIR"

echo "== 1. generate 6 H&E-like slides from 3 sites, with ground-truth masks"
wsiseg synth slides --n 6 --width 3072 --height 2048 --sites 3 --seed 0

echo "== 2. tile them, tissue only (masks found beside the slides); small 64 px tiles keep CPU training short"
wsiseg tile slides/ --sites slides/cohort.csv --window 500 --stride 250 --size 64

echo "== 3. the privacy plan of the paper's setting, without training"
wsiseg fed-train --clients 3 --sigma 0.05 --clip 0.5 --rounds 150 --model dhunet_tiny --img-size 64 --dry-run

echo "== 4. federated training: 3 sites (one per hospital), central DP, tiny DHUnet"
wsiseg fed-train --partition by-site --clients 3 --sigma 0.05 --clip 0.5 --rounds 8 --local-epochs 3 \
  --model dhunet_tiny --img-size 64 --batch-size 8 --lr 0.03 --seed 0 --eval-every 2

echo "== 5. predict a slide with the newest run's checkpoint"
wsiseg predict slides/slide_005.svs --out masks/slide_005.tif

echo "== 6. export overlay, QuPath GeoJSON and class areas"
wsiseg export masks/slide_005.tif --slide slides/slide_005.svs --out export
echo "demo done: see $DEMO_DIR/export/slide_005_overlay.png"
