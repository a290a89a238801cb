{{/* The gateway's bootstrap config: gateway.config with the keys the chart owns merged in
(listeners on the Service's ports, the admin endpoint the probes use, the Kafka connection,
the topics, the policy file). `tail.gateway_id` is left to its default (host name and process
id, so each pod differs): one id shared by all replicas would merge their decision records. */}}
{{- define "weir.gateway.config" -}}
{{- $v := .Values.gateway }}
{{- include "weir.gateway.validatePorts" . }}
{{- range $i, $t := $v.auth.tokens }}
{{- if eq (empty $t.existingSecret) (empty $t.sha256) }}
{{- fail (printf "gateway.auth.tokens[%d] (tenant %s): set existingSecret (with key) or sha256" $i $t.tenant) }}
{{- end }}
{{- end }}
{{- include "weir.ownedKeys" (dict "config" $v.config "component" "gateway" "keys" (list "admin" "policy_file")) }}
{{- /* Of `tail`, only the signing key's source is the user's; the chart sets the topic. */}}
{{- with $v.config.tail }}
{{- include "weir.ownedKeys" (dict "config" . "component" "gateway" "keys" (list "decisions_topic" "gateway_id")) }}
{{- end }}
{{- $cfg := deepCopy $v.config }}
{{- $topics := .Values.kafka.topics }}
{{- $owned := dict
  "receivers" (dict
    "grpc" (dict "enabled" (index $v.ports "otlp").enabled "endpoint" (printf "0.0.0.0:%d" (int (index $v.ports "otlp").containerPort)))
    "http" (dict "enabled" (index $v.ports "otlp-http").enabled "endpoint" (printf "0.0.0.0:%d" (int (index $v.ports "otlp-http").containerPort))))
  "admin" (dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.metrics.containerPort)))
  "kafka" (dict
    "brokers" .Values.kafka.brokers
    "security" (include "weir.kafka.securityConfig" . | fromYaml)
    "traces" (dict "topic" $topics.traces)
    "metrics" (dict "topic" $topics.metrics)
    "logs" (dict "topic" $topics.logs))
  "tail" (dict "decisions_topic" $topics.decisions) }}
{{- if $v.policy }}
{{- $_ := set $owned "policy_file" "/etc/weir/policy/policy.yaml" }}
{{- end }}
{{- if $v.tls.existingSecret }}
{{- $tls := dict "cert_file" "/etc/weir/tls/tls.crt" "key_file" "/etc/weir/tls/tls.key" "min_version" $v.tls.minVersion }}
{{- if $v.tls.clientCaKey }}
{{- $_ := set $tls "client_ca_file" "/etc/weir/tls/client-ca.crt" }}
{{- end }}
{{- $_ := set $owned.receivers.grpc "tls" $tls }}
{{- $_ := set $owned.receivers.http "tls" (deepCopy $tls) }}
{{- end }}
{{- with $v.auth.tokens }}
{{- $tokens := list }}
{{- range $i, $t := . }}
{{- if $t.existingSecret }}
{{- $tokens = append $tokens (dict "tenant" $t.tenant "file" (printf "/etc/weir/receiver-tokens/%d" $i)) }}
{{- else }}
{{- $tokens = append $tokens (dict "tenant" $t.tenant "sha256" $t.sha256) }}
{{- end }}
{{- end }}
{{- $auth := dict "tokens" $tokens }}
{{- with $v.auth.apiKeyHeader }}
{{- $_ := set $auth "api_key_header" . }}
{{- end }}
{{- $_ := set $owned.receivers "auth" $auth }}
{{- end }}
{{- if and $v.controlPlane.endpoint (not .Values.controlPlane.enabled) (not $v.controlPlane.existingSecret) }}
{{- fail "gateway.controlPlane.endpoint names another control plane: set gateway.controlPlane.existingSecret to the Secret with its gateway token" }}
{{- end }}
{{- if include "weir.gateway.controlPlaneEndpoint" . }}
{{- $_ := set $owned "control_plane" (dict
  "endpoint" (include "weir.gateway.controlPlaneEndpoint" .)
  "token_file" "/etc/weir/control-plane-token/token"
  "state_dir" "/var/lib/weir-gateway"
  "labels" $v.controlPlane.labels) }}
{{- if include "weir.gateway.controlPlaneCa" . }}
{{- $_ := set $owned.control_plane "tls" (dict "ca_file" "/etc/weir/control-plane-ca/ca.crt") }}
{{- end }}
{{- else if hasKey $v.config "control_plane" }}
{{- fail "gateway.config.control_plane is set but the gateway has no control plane: enable controlPlane or set gateway.controlPlane.endpoint" }}
{{- end }}
{{- /* Where the deployment mounts the spool's volume (merged into config.spool). */}}
{{- $_ := set $owned "spool" (dict "directory" "/var/lib/weir-gateway/spool") }}
{{- $cfg = mustMergeOverwrite $cfg $owned }}
{{- toYaml $cfg }}
{{- end }}

{{/* The control plane's watch URL the gateways use; empty: none. */}}
{{- define "weir.gateway.controlPlaneEndpoint" -}}
{{- if .Values.gateway.controlPlane.endpoint }}
{{- .Values.gateway.controlPlane.endpoint }}
{{- else if .Values.controlPlane.enabled }}
{{- printf "%s://%s:%d" (include "weir.controlPlane.scheme" .) (include "weir.controlPlane.host" .) (int .Values.controlPlane.ports.watch) }}
{{- end }}
{{- end }}

{{/* Whether the gateways trust a CA from the release's control-plane TLS Secret. */}}
{{- define "weir.gateway.controlPlaneCa" -}}
{{- $cp := .Values.controlPlane }}
{{- if and $cp.enabled $cp.tls.existingSecret $cp.tls.caKey (not .Values.gateway.controlPlane.endpoint) }}true{{ end }}
{{- end }}

{{/* The Secret and key of the gateway token. */}}
{{- define "weir.gateway.controlPlaneTokenSecret" -}}
{{- if .Values.gateway.controlPlane.existingSecret }}
{{- .Values.gateway.controlPlane.existingSecret }}
{{- else }}
{{- include "weir.controlPlane.tokensSecretName" . }}
{{- end }}
{{- end }}

{{- define "weir.gateway.controlPlaneTokenKey" -}}
{{- if .Values.gateway.controlPlane.existingSecret }}
{{- .Values.gateway.controlPlane.existingSecretKey }}
{{- else }}gateway-token{{ end }}
{{- end }}
