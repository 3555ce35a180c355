#!/bin/sh
# Build /opt/venv with one image kind's third-party dependencies, from the wheelhouse when one
# was given (offline), else from PyPI (+ PyTorch's CPU index for torch). Our own package is not
# installed here: the Dockerfile copies pipeline/ and calib/ to /opt/toolchain, which the .pth
# written below puts on sys.path, so a code change rebuilds a small layer and never this one.
#   install-venv.sh export
#   install-venv.sh dfc <DFC wheel file name> [<expected sha256>]
set -eu
kind=$1
python3 -m venv /opt/venv
pip="/opt/venv/bin/python -m pip"
if [ -n "$(ls -A /wheelhouse 2>/dev/null)" ]; then
  echo "installing from the wheelhouse only (--no-index)"
  from="--no-index --find-links /wheelhouse"
else
  from="--extra-index-url https://download.pytorch.org/whl/cpu"
fi
case "$kind" in
  export)
    $pip install --no-cache-dir $from -c /build/constraints-export.txt \
      torch transformers onnx onnxruntime onnxslim soundfile soxr tqdm numpy
    ;;
  dfc)
    wheel="/build/vendor/$2"
    expected="${3:-}"
    if [ -n "$expected" ]; then
      echo "$expected  $wheel" | sha256sum -c - || {
        echo "The DFC wheel $2 does not have sha256 $expected: download it again from Hailo's Developer Zone." >&2
        exit 3
      }
    fi
    $pip install --no-cache-dir $from -c /build/constraints-dfc.txt "$wheel" onnxruntime numpy
    ;;
  *) echo "install-venv.sh: unknown kind $kind" >&2; exit 2 ;;
esac
$pip freeze > /opt/venv/pip-freeze.txt
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo /opt/toolchain > "$site/whisper_hailo_toolchain.pth"
