#!/usr/bin/env bash
# Converts every model fixture with `rdrop convert` and checks, in transformers, that the written
# directory loads without missing keys and gives the fixture's logits (max abs error <= 1e-5).
#   bash scripts/check_convert_roundtrip.sh [path/to/rdrop]
set -euo pipefail
cd "$(dirname "$0")/.."
RDROP=${1:-}
if [ -z "$RDROP" ]; then
  cargo build --release --bin rdrop >&2
  RDROP=${CARGO_TARGET_DIR:-target}/release/rdrop
fi
PY=$(bash scripts/py-env.sh)/bin/python
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
status=0
for dir in tests/fixtures/models/*/; do
  variant=$(basename "$dir")
  "$RDROP" convert --model "$dir" --out "$OUT/$variant"
  "$PY" scripts/make_model_fixtures.py --check-roundtrip "$OUT/$variant" --reference "$dir" || status=1
done
exit $status
