# Sourced by run_all.sh and run_tests.sh: make sure a Python environment with this kit is
# active, creating it on the first run, with the Jupyter kernel `metanet-kit` registered, and export PY (its python).
#
# Order: an already active virtualenv/conda env that imports metanet_utils and papermill
# from this checkout; else an existing ./.venv; else, where conda is on the PATH (and
# METANET_USE_CONDA is not 0), a conda env named `metanet` made from environment.yml that
# already holds this checkout's kit, or the env of environment.yml created in ./.conda-env;
# else ./.venv, created with `python3 -m venv`. METANET_USE_CONDA=1 prefers conda even over an
# existing ./.venv; METANET_USE_CONDA=0 never uses conda.
# The env is reinstalled when pyproject.toml changes (a stamp file records its hash).

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_stamp_value="$(sha1sum "$_root/pyproject.toml" | cut -c1-16)"
_kernel=metanet-kit

_env_ok() {  # $1 = python; true if it runs this checkout's kit with its dependencies
  # (from /, so the checkout in the current folder cannot stand in for the installed package: the
  # notebooks' kernels import it from elsewhere)
  ( cd / && "$1" - "$_root" >/dev/null 2>&1 ) <<'PY'
import sys, pathlib, importlib
import metanet_utils, papermill, timm, torch  # noqa: F401
root = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(metanet_utils.__file__).resolve().parent.parent == root
PY
}

_install() {  # $1 = python of a fresh env
  echo "[env] installing the kit and its dependencies into $("$1" -c 'import sys; print(sys.prefix)') (first run: a few minutes)"
  "$1" -m pip install --quiet --upgrade pip >/dev/null || return 1
  # (the grep drops this workplace's noisy 'Location ... is ignored' notes; pip's exit code is kept)
  "$1" -m pip install --quiet -e "$_root[dev]" 2> >(grep -v "^WARNING: Location" >&2) || return 1
  "$1" -m ipykernel install --sys-prefix --name "$_kernel" --display-name "MetaNet kit" >/dev/null || return 1
  echo "$_stamp_value" > "$("$1" -c 'import sys; print(sys.prefix)')/.metanet-stamp"
}

PY=""
if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && command -v python >/dev/null && _env_ok python; then
  PY="$(command -v python)"
  "$PY" -c "import jupyter_client.kernelspec as k; k.KernelSpecManager().get_kernel_spec('$_kernel')" >/dev/null 2>&1 \
    || "$PY" -m ipykernel install --sys-prefix --name "$_kernel" --display-name "MetaNet kit" >/dev/null 2>&1 \
    || "$PY" -m ipykernel install --user --name "$_kernel" --display-name "MetaNet kit" >/dev/null
  echo "[env] using the active environment ($PY)"
elif [ "${METANET_USE_CONDA:-}" != "0" ] && command -v conda >/dev/null \
     && { [ "${METANET_USE_CONDA:-}" = "1" ] || [ ! -x "$_root/.venv/bin/python" ]; }; then
  _prefix="$_root/.conda-env"
  if [ ! -x "$_prefix/bin/python" ]; then  # `conda env create -f environment.yml` made by the user?
    _named="$(conda env list 2>/dev/null | awk '$1 == "metanet" {print $NF}')"
    if [ -n "$_named" ] && [ -x "$_named/bin/python" ] && _env_ok "$_named/bin/python"; then
      _prefix="$_named"
    fi
  fi
  if [ ! -x "$_prefix/bin/python" ]; then
    echo "[env] creating the conda environment of environment.yml in $_prefix"
    conda env create --quiet --prefix "$_prefix" --file "$_root/environment.yml" || { echo "[env] conda env create failed" >&2; return 1 2>/dev/null || exit 1; }
  fi
  PY="$_prefix/bin/python"
  if [ "$(cat "$_prefix/.metanet-stamp" 2>/dev/null)" != "$_stamp_value" ] || ! _env_ok "$PY"; then
    _install "$PY" || { echo "[env] installing into $_prefix failed" >&2; return 1 2>/dev/null || exit 1; }
  else
    echo "[env] reusing the conda environment $_prefix"
  fi
else
  _venv="$_root/.venv"
  if [ ! -x "$_venv/bin/python" ]; then
    echo "[env] creating $_venv"
    python3 -m venv "$_venv" || { echo "[env] python3 -m venv failed (install python3-venv)" >&2; return 1 2>/dev/null || exit 1; }
  fi
  PY="$_venv/bin/python"
  if [ "$(cat "$_venv/.metanet-stamp" 2>/dev/null)" != "$_stamp_value" ] || ! _env_ok "$PY"; then
    _install "$PY" || { echo "[env] installing into $_venv failed" >&2; return 1 2>/dev/null || exit 1; }
  else
    echo "[env] reusing $_venv"
  fi
fi
export PY
