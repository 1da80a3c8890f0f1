"""Table of loadtest/auth/bench.sh's runs: msg/s per mode and round, the
mean ratio to auth off, Warren's CPU per message."""
import json, glob, collections, statistics as st, sys
out = sys.argv[1] if len(sys.argv) > 1 else 'loadtest/results/auth'
# Auth: msg/s per mode per round.
auth = collections.defaultdict(lambda: collections.defaultdict(dict))
for f in sorted(glob.glob(out + '/auth-*-*.json')):
    _, mode, rnd = f.split('/')[-1][:-5].split('-')
    d = json.load(open(f))
    for r in d['results']:
        auth[r['scenario']][mode][rnd] = (r['rate'], r.get('warren_cpu_us_per_msg'))
print('| scenario | mode | msg/s (r1 r2 r3) | mean | ratio to off | Warren CPU µs/msg (mean) |')
print('|---|---|---|---|---|---|')
for sc in sorted(auth):
    off = st.mean(x[0] for x in auth[sc]['off'].values())
    for mode in ['off','token','jwt']:
        vals = [auth[sc][mode][r] for r in sorted(auth[sc][mode])]
        m = st.mean(x[0] for x in vals)
        print(f"| {sc} | {mode} | {' '.join('%.0f'%x[0] for x in vals)} | {m:.0f} | {m/off:.2f} | {st.mean(x[1] for x in vals):.0f} |")
