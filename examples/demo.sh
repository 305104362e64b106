#!/usr/bin/env bash
# End-to-end demo on a generated cohort, on CPU, in a few minutes. Run through `make demo`.
# Everything is written under $DEMO_DIR (default ./demo); the commands are the ones users type.
set -euo pipefail
DEMO_DIR="${DEMO_DIR:-demo}"
mkdir -p "$DEMO_DIR"
cd "$DEMO_DIR"

echo "== 1. generate a cohort of 6 H&E-like slides from 3 sites, with ground-truth masks"
wsiseg synth slides --n 6 --width 4096 --height 3072 --sites 3 --seed 0

echo "== 2. tile them (1000 px windows, stride 500, 224 px tiles, tissue only; masks found beside slides)"
wsiseg tile slides/ --sites slides/cohort.csv

echo "== 3. what the slides look like to wsiseg"
wsiseg info slides/slide_000.svs
