#!/usr/bin/env bash
# The policies of the benchmark targets, shared by scripts/bench.sh and
# scripts/bench/profile_gateway.sh (source this file).

# Writes a policy of 50 sampling and 50 routing rules to $1, routing to topic $2. No rule
# matches the load (so every span is kept, as without rules), and none is indexed by
# service.name, so every span is tested against all 100: the cost of rules, not of outcomes.
write_rules_policy() {
  local file="$1" topic="$2" i
  {
    echo "version: 1"
    echo "sampling:"
    echo "  default_probability: 1"
    echo "  rules:"
    for ((i = 0; i < 50; i++)); do
      echo "    - name: sample-$i"
      echo "      match: { all: [ { span_attribute: http.route, eq: /never/$i }, { duration: { gt: 10s } } ] }"
      echo "      probability: 0.$((i % 9 + 1))"
    done
    echo "routing:"
    echo "  rules:"
    for ((i = 0; i < 50; i++)); do
      echo "    - name: route-$i"
      echo "      match: { any: [ { span_name: { prefix: never-$i } }, { span_attribute: k$i, gte: $i } ] }"
      echo "      action: { topic: $topic }"
    done
  } >"$file"
}

# Writes a policy with tail sampling to $1: five tail rules every span meets (errors, slow
# spans, slow client spans, an attribute predicate, a root-span SLA; some match the load),
# windows of 10s sized for a million marked traces at 0.1% (1.8 MB), published every
# BENCH_TAIL_PUBLISH_INTERVAL.
write_tail_policy() {
  cat >"$1" <<'EOF'
version: 1
tail:
  window: 10s
  expected_traces: 1000000
  false_positive_rate: 0.001
  publish_interval: PUBLISH_INTERVAL
  baseline_probability: 0.01
  rules:
    - { name: errors, error: true }
    - { name: slow, slower_than: 45ms }
    - { name: slow-client, slower_than: 30ms, span_kind: client }
    - { name: root-sla, root_slower_than: 40ms }
EOF
  sed -i "s/PUBLISH_INTERVAL/${BENCH_TAIL_PUBLISH_INTERVAL:-5s}/" "$1"
  if [ "${BENCH_TAIL_ATTRIBUTE_RULE:-1}" = 1 ]; then
    echo "    - { name: vip, match: { span_attribute: customer.tier, eq: gold } }" >>"$1"
  fi
}

# Writes the issue 19 "full path" policy to $1: write_rules_policy's 100 rules (routing to
# topic $2) and write_tail_policy's tail marking, in one document.
write_full_policy() {
  local file="$1" topic="$2"
  write_rules_policy "$file" "$topic"
  write_tail_policy "$file.tail"
  tail -n +2 "$file.tail" >>"$file"
  rm -f "$file.tail"
}
