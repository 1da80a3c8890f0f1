#!/usr/bin/env bash
# The cost of auth (BENCHMARKS.md, "After issues 11-13"): unary publish and
# PublishStream with auth off, a static token and a JWT, in ROUNDS rounds
# (default 6), modes alternating. Run from the repository root with the
# broker up and release builds (cargo build --release -p warren -p warren-loadtest).
# Output: one JSON per run in loadtest/results/auth/, and a table.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=loadtest/results/auth
mkdir -p "$OUT"
if [ ! -f "$OUT/key.pem" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OUT/key.pem" 2>/dev/null
fi
(cd "$OUT" && python3 "$OLDPWD/loadtest/auth/mkjwt.py")
LT=./target/release/warren-loadtest
for round in $(seq 1 "${ROUNDS:-6}"); do
  for mode in off token jwt; do
    TOKEN=()
    [ "$mode" = token ] && TOKEN=(--token "$(cat "$OUT/token.txt")")
    [ "$mode" = jwt ] && TOKEN=(--token "$(cat "$OUT/jwt.txt")")
    $LT --scenario publish-unary --scenario publish-stream --target warren --queue-type classic --size 256 \
      --messages 20000 --duration 15 --warren-config "$OUT/auth-$mode.toml" "${TOKEN[@]}" \
      --json "$OUT/auth-$mode-$round.json" > "$OUT/auth-$mode-$round.md" 2>&1
  done
done
python3 loadtest/auth/compare.py "$OUT"
