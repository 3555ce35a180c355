#!/bin/sh
# System layer of every image: Python with venv, the calibration tools (export image only),
# the non-root user and the CUDA JIT cache directory. apt runs only for what the base lacks,
# so a base that already has them (the CI's debootstrapped Debian) needs no network here.
#   install-system.sh python   -> python3 + venv, user "toolchain" (uid 10001), cache dirs
#   install-system.sh export   -> espeak-ng, sox (real speech for the calibration set)
set -eu
need=""
case "$1" in
  python)
    python3 -c 'import venv, ensurepip' 2>/dev/null || need="$need python3 python3-venv"
    command -v useradd >/dev/null 2>&1 || need="$need passwd"
    ;;
  export)
    command -v espeak-ng >/dev/null 2>&1 || need="$need espeak-ng"
    command -v sox >/dev/null 2>&1 || need="$need sox"
    ;;
  *) echo "install-system.sh: unknown part $1" >&2; exit 2 ;;
esac
if [ -n "$need" ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends $need ca-certificates
  rm -rf /var/lib/apt/lists/*
fi
if [ "$1" = python ]; then
  # Stages run as the caller's uid:gid (docker_engine); this user is the default for anything else.
  useradd --uid 10001 --user-group --create-home --shell /bin/sh toolchain
  # CUDA JIT cache: a named volume is mounted here; world-writable (sticky) because stages run
  # as the caller's uid, which the image cannot know in advance.
  mkdir -p /var/cache/whisper-hailo/cuda
  chmod 1777 /var/cache/whisper-hailo/cuda
fi
