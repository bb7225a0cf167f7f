#!/bin/sh
# Checks the integration environment from outside: through Envoy, and each node's
# admin port. Needs sh and curl, nothing else.
#
# The rule is config/ratelimit.yaml's: domain hivemind, generic_key=default, 5 requests
# per second. Windows are one second long and aligned to the clock's seconds, so each
# burst starts just after a second begins, and is sent again if it spilled over.
#
#   1. a burst within one second: the first 5 requests pass, the 6th and later get 429;
#   2. in that same second every node (asked on its admin port, POST /json) refuses one
#      more hit: they all learned the count over the mesh;
#   3. a second later requests pass again;
#   4. with a node stopped (the one Envoy asks), the limit still holds: 1 and 2 again.
#
# Environment:
#   ENVOY_URL  Envoy's listener (default http://127.0.0.1:10000/)
#   NODE_URLS  the nodes' admin URLs, space-separated (default: the compose file's,
#              http://127.0.0.1:18080 http://127.0.0.1:18081 http://127.0.0.1:18082)
#   STOP_NODE  a command that stops the node Envoy asks first (hivemind-1), e.g.
#              "docker compose stop hivemind-1"; empty: check 4 is skipped
#   SETTLE     seconds to wait after STOP_NODE for Envoy's health checks (default 3)
#   WAIT       seconds to wait for Envoy to answer at all (default 60)
set -u

URL=${ENVOY_URL:-http://127.0.0.1:10000/}
NODE_URLS=${NODE_URLS:-http://127.0.0.1:18080 http://127.0.0.1:18081 http://127.0.0.1:18082}
STOP_NODE=${STOP_NODE:-}
SETTLE=${SETTLE:-3}
WAIT=${WAIT:-60}
LIMIT=5
BURST=8
QUERY='{"domain":"hivemind","descriptors":[{"entries":[{"key":"generic_key","value":"default"}]}]}'
passed=0
failed=0

code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL" 2>/dev/null || :
}

ok() { passed=$((passed + 1)); echo "ok   - $*"; }
not_ok() { failed=$((failed + 1)); echo "FAIL - $*"; }

# Sleep until the wall clock's second changes.
next_second() {
    start=$(date +%s)
    while [ "$(date +%s)" = "$start" ]; do sleep 0.01; done
}

# BURST requests right after a second begins; sets $codes and $second. Sent again (up
# to 3 times) when they did not fit into one second, as on a stalled machine they may not.
burst() {
    tries=0
    while :; do
        next_second
        second=$(date +%s)
        codes=""
        i=0
        while [ "$i" -lt "$BURST" ]; do
            codes="$codes $(code)"
            i=$((i + 1))
        done
        codes=${codes# }
        tries=$((tries + 1))
        if [ "$(date +%s)" = "$second" ] || [ "$tries" -ge 3 ]; then
            return
        fi
        echo "     (the burst spilled into the next second; again: $codes)"
    done
}

# Every node that is up, asked for one more hit on its admin port; sets $answers, $up, $refused.
ask_nodes() {
    answers=""
    up=0
    refused=0
    for node in $NODE_URLS; do
        health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$node/healthcheck" 2>/dev/null || :)
        [ "$health" = 200 ] || continue
        c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST -d "$QUERY" "$node/json" 2>/dev/null || :)
        answers="$answers $node:$c"
        up=$((up + 1))
        if [ "$c" = 429 ]; then refused=$((refused + 1)); fi
    done
}

# 1 and 2: a burst, then every node that is up refuses one more hit in that second.
# Both again (up to 3 times) when the nodes could not be asked within the burst's second.
check_limit() {
    what=$1
    attempt=0
    while :; do
        attempt=$((attempt + 1))
        burst
        sleep 0.1 # five sync intervals: the count reaches every node
        ask_nodes
        if [ "$(date +%s)" = "$second" ] || [ "$attempt" -ge 3 ]; then break; fi
        echo "     (the nodes were asked after the burst's second had ended; again)"
    done
    n=0
    bad=""
    for c in $codes; do
        n=$((n + 1))
        if [ "$n" -le "$LIMIT" ]; then want=200; else want=429; fi
        if [ "$c" != "$want" ]; then bad="$bad request $n: $c, want $want;"; fi
    done
    if [ -z "$bad" ]; then ok "$what: $codes"; else not_ok "$what: $codes —$bad"; fi
    if [ "$(date +%s)" != "$second" ]; then
        not_ok "every node knows the count: could not ask them within one second (a stalled machine?):$answers"
    elif [ "$up" -ge 2 ] && [ "$refused" = "$up" ]; then
        ok "every node knows the count (POST /json -> 429):$answers"
    else
        not_ok "every node knows the count: want 429 from each of at least 2 nodes up:$answers"
    fi
}

echo "checking $URL (limit $LIMIT per second) and the nodes $NODE_URLS"

# Wait for Envoy and the nodes behind it: any 200 or 429 means the path works.
deadline=$(($(date +%s) + WAIT))
while :; do
    c=$(code)
    if [ "$c" = 200 ] || [ "$c" = 429 ]; then break; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        not_ok "Envoy did not answer 200 or 429 within ${WAIT}s (last: $c)"
        echo "checks: $passed passed, $failed failed"
        exit 1
    fi
    sleep 0.5
done

# 1, 2.
check_limit "in one second the first $LIMIT pass, the 6th gets 429"

# 3. After a second, requests pass again.
next_second
c=$(code)
if [ "$c" = 200 ]; then ok "a second later a request passes: $c"; else not_ok "a second later: $c, want 200"; fi

# 4. Envoy's node stopped: Envoy asks the next one, which holds the limit too.
if [ -n "$STOP_NODE" ]; then
    echo "     stopping a node: $STOP_NODE"
    if sh -c "$STOP_NODE"; then
        sleep "$SETTLE"
        check_limit "with a node stopped, the first $LIMIT pass, the 6th gets 429"
    else
        not_ok "could not stop a node: $STOP_NODE"
    fi
else
    echo "skip - with a node stopped (STOP_NODE is not set)"
fi

echo "checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
