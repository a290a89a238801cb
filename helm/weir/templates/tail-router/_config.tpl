{{/* The tail router's bootstrap config (config/tail-router.yaml): tailRouter.config with the
keys the chart owns merged in: the admin endpoint the probes use, the brokers, the Kafka
security settings and the three topics, shared with the gateway so the two always agree. */}}
{{- define "weir.tailRouter.config" -}}
{{- $v := .Values.tailRouter }}
{{- include "weir.ownedKeys" (dict "config" $v.config "component" "tailRouter" "keys" (list "admin")) }}
{{- $cfg := deepCopy $v.config }}
{{- $topics := .Values.kafka.topics }}
{{- $owned := dict
  "admin" (dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.admin)))
  "kafka" (dict
    "brokers" .Values.kafka.brokers
    "security" (include "weir.kafka.securityConfig" . | fromYaml)
    "hot_topic" $topics.traces
    "cold_topic" $topics.cold
    "decisions_topic" $topics.decisions) }}
{{- $cfg = mustMergeOverwrite $cfg $owned }}
{{- toYaml $cfg }}
{{- end }}
