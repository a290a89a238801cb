{{- define "weir.controlPlane.tokensSecretName" -}}
{{- .Values.controlPlane.auth.existingSecret | default (include "weir.componentName" (dict "ctx" . "component" "control-plane-tokens")) }}
{{- end }}

{{- define "weir.controlPlane.dsnSecretName" -}}
{{- .Values.controlPlane.storage.postgresql.existingSecret | default (include "weir.componentName" (dict "ctx" . "component" "control-plane-postgresql")) }}
{{- end }}

{{- define "weir.controlPlane.dsnSecretKey" -}}
{{- if .Values.controlPlane.storage.postgresql.existingSecret }}{{ .Values.controlPlane.storage.postgresql.existingSecretKey }}{{ else }}dsn{{ end }}
{{- end }}

{{- define "weir.controlPlane.validate" -}}
{{- $st := .Values.controlPlane.storage }}
{{- if eq $st.backend "postgresql" }}
{{- if and $st.postgresql.dsn $st.postgresql.existingSecret }}
{{- fail "controlPlane.storage.postgresql: set dsn or existingSecret, not both" }}
{{- end }}
{{- if not (or $st.postgresql.dsn $st.postgresql.existingSecret) }}
{{- fail "controlPlane.storage.postgresql: set existingSecret (or dsn) with the postgresql backend" }}
{{- end }}
{{- end }}
{{- $a := .Values.controlPlane.auth }}
{{- if and $a.existingSecret (or $a.adminToken $a.viewerToken $a.gatewayToken) }}
{{- fail "controlPlane.auth: set existingSecret or the tokens, not both" }}
{{- end }}
{{- end }}

{{/* http or https, as the control plane's listeners serve. */}}
{{- define "weir.controlPlane.scheme" -}}
{{- if .Values.controlPlane.tls.existingSecret }}https{{ else }}http{{ end }}
{{- end }}

{{/* The Service the gateways and weirctl reach the control plane by. */}}
{{- define "weir.controlPlane.host" -}}
{{- printf "%s.%s.svc" (include "weir.componentName" (dict "ctx" . "component" "control-plane")) .Release.Namespace }}
{{- end }}

{{/* Environment of the control-plane container: the PostgreSQL DSN from its Secret. */}}
{{- define "weir.controlPlane.env" -}}
{{- if eq .Values.controlPlane.storage.backend "postgresql" }}
- name: WEIR_CONTROL_PLANE_DSN
  valueFrom:
    secretKeyRef:
      name: {{ include "weir.controlPlane.dsnSecretName" . }}
      key: {{ include "weir.controlPlane.dsnSecretKey" . }}
{{- end }}
{{- end }}

{{/* The control plane's bootstrap config (config/control-plane.yaml): controlPlane.config
with the keys the chart owns merged in: the listeners on the Service's ports, the storage
(the SQLite file on the claim, or the PostgreSQL DSN from an environment variable the Secret
fills) and the tokens (files from the tokens Secret). */}}
{{- define "weir.controlPlane.config" -}}
{{- $v := .Values.controlPlane }}
{{- include "weir.ownedKeys" (dict "config" $v.config "component" "controlPlane" "keys" (list "api" "watch" "auth")) }}
{{- $cfg := deepCopy $v.config }}
{{- $storage := dict }}
{{- if eq $v.storage.backend "sqlite" }}
{{- $_ := set $storage "sqlite" (dict "path" "/var/lib/weir/control-plane.db") }}
{{- else }}
{{- $_ := set $storage "postgres" (dict "dsn_env" "WEIR_CONTROL_PLANE_DSN" "max_connections" $v.storage.postgresql.maxConnections) }}
{{- end }}
{{- $tokens := list
  (dict "name" "admin" "role" "admin" "file" "/etc/weir/tokens/admin-token")
  (dict "name" "viewer" "role" "viewer" "file" "/etc/weir/tokens/viewer-token")
  (dict "name" "gateways" "role" "gateway" "file" "/etc/weir/tokens/gateway-token") }}
{{- range $v.auth.extraTokens }}
{{- if has .name (list "admin" "viewer" "gateways") }}
{{- fail (printf "controlPlane.auth.extraTokens: the name %s is the chart's own token's; pick another" .name) }}
{{- end }}
{{- $token := dict "name" .name "role" .role "sha256" .sha256 }}
{{- if .instances }}{{- $_ := set $token "instances" .instances }}{{- end }}
{{- $tokens = append $tokens $token }}
{{- end }}
{{- $owned := dict
  "api" (merge (dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.api))) (deepCopy $v.api))
  "watch" (dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.watch)))
  "storage" $storage
  "auth" (dict "tokens" $tokens) }}
{{- if $v.tls.existingSecret }}
{{- $_ := set $owned.api "tls" (dict "cert_file" "/etc/weir/tls/tls.crt" "key_file" "/etc/weir/tls/tls.key") }}
{{- $_ := set $owned.watch "tls" (dict "cert_file" "/etc/weir/tls/tls.crt" "key_file" "/etc/weir/tls/tls.key") }}
{{- end }}
{{- $cfg = mustMergeOverwrite $cfg $owned }}
{{- toYaml $cfg }}
{{- end }}
