# Shared settings of Tandem's scripts (sourced, not run).
# One build cache outside the checkout, so repeated runs on one machine reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
