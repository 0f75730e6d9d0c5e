#!/usr/bin/env bash
# Makes Fashion-MNIST available offline: Debian's dataset-fashion-mnist package when apt-get can be used
# (root on Debian/Ubuntu). Elsewhere the quickstart downloads it (bench run --download).
set -uo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
    && exit 0
fi
echo "note: Debian's dataset-fashion-mnist is not installed; Fashion-MNIST will be downloaded by torchvision" >&2
exit 1
