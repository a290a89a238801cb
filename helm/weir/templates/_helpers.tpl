{{/*
Names, labels, images and the pieces every component shares.
*/}}

{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-weir, or the release name alone when it already contains the chart name. */}}
{{- define "weir.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's resource name: (dict "ctx" $ "component" "gateway"). Kept to 52
characters: a StatefulSet's name goes into its pods' controller-revision-hash label with a
suffix of 11, and labels hold 63. */}}
{{- define "weir.componentName" -}}
{{- $base := include "weir.fullname" .ctx | trunc (int (sub 51 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .component }}
{{- end }}

{{- define "weir.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource of a component: (dict "ctx" $ "component" "gateway"). */}}
{{- define "weir.labels" -}}
helm.sh/chart: {{ include "weir.chart" .ctx }}
{{ include "weir.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: weir
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels a component's selectors match; they never change between upgrades. */}}
{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weir.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weir.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A component's image: (dict "ctx" $ "image" .Values.gateway.image). */}}
{{- define "weir.image" -}}
{{- $tag := .image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion }}
{{- $repo := .image.repository }}
{{- with .ctx.Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{/* Pod-level settings every component's pod spec shares. */}}
{{- define "weir.podCommon" -}}
serviceAccountName: {{ include "weir.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling keys of a component's pod spec: (dict "ctx" $ "values" .Values.gateway). */}}
{{- define "weir.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Kafka: where the SASL password and the TLS files come from, and what the configs say.
The password and the TLS files are mounted read-only from Secrets; the configs name the files.
*/}}

{{- define "weir.kafka.usesSasl" -}}
{{- if has .Values.kafka.security.protocol (list "sasl_plaintext" "sasl_ssl") }}true{{ end }}
{{- end }}

{{- define "weir.kafka.usesTls" -}}
{{- if has .Values.kafka.security.protocol (list "ssl" "sasl_ssl") }}true{{ end }}
{{- end }}

{{/* The Secret that holds the SASL password. */}}
{{- define "weir.kafka.saslSecretName" -}}
{{- .Values.kafka.security.sasl.existingSecret | default (include "weir.componentName" (dict "ctx" . "component" "kafka-sasl")) }}
{{- end }}

{{- define "weir.kafka.saslSecretKey" -}}
{{- if .Values.kafka.security.sasl.existingSecret }}{{ .Values.kafka.security.sasl.existingSecretKey }}{{ else }}password{{ end }}
{{- end }}

{{/* Whether the chart has TLS files to mount: inline PEMs or an existing Secret. */}}
{{- define "weir.kafka.hasTlsFiles" -}}
{{- $t := .Values.kafka.security.tls }}
{{- if and (include "weir.kafka.usesTls" .) (or (include "weir.kafka.tlsCa" .) (include "weir.kafka.tlsCert" .)) }}true{{ end }}
{{- end }}

{{/* Whether a CA file is mounted (inline PEM, or a caKey in the existing Secret). */}}
{{- define "weir.kafka.tlsCa" -}}
{{- $t := .Values.kafka.security.tls }}
{{- if $t.existingSecret }}{{ if $t.caKey }}true{{ end }}{{ else if $t.ca }}true{{ end }}
{{- end }}

{{/* Whether a client certificate and key are mounted, for mTLS. */}}
{{- define "weir.kafka.tlsCert" -}}
{{- $t := .Values.kafka.security.tls }}
{{- if $t.existingSecret }}{{ if $t.certKey }}true{{ end }}{{ else if $t.cert }}true{{ end }}
{{- end }}

{{- define "weir.kafka.tlsSecretName" -}}
{{- .Values.kafka.security.tls.existingSecret | default (include "weir.componentName" (dict "ctx" . "component" "kafka-tls")) }}
{{- end }}

{{/* Refuses settings that cannot work, with the key to fix. */}}
{{- define "weir.kafka.validate" -}}
{{- $s := .Values.kafka.security }}
{{- if include "weir.kafka.usesSasl" . }}
{{- if not $s.sasl.username }}
{{- fail "kafka.security.sasl.username is required when kafka.security.protocol is sasl_plaintext or sasl_ssl" }}
{{- end }}
{{- if and $s.sasl.password $s.sasl.existingSecret }}
{{- fail "kafka.security.sasl: set password or existingSecret, not both" }}
{{- end }}
{{- if not (or $s.sasl.password $s.sasl.existingSecret) }}
{{- fail "kafka.security.sasl: set existingSecret (or password) when kafka.security.protocol is sasl_plaintext or sasl_ssl" }}
{{- end }}
{{- end }}
{{- if and $s.tls.existingSecret (or $s.tls.ca $s.tls.cert $s.tls.key) }}
{{- fail "kafka.security.tls: set existingSecret or the inline ca/cert/key, not both" }}
{{- end }}
{{- if ne (empty $s.tls.cert) (empty $s.tls.key) }}
{{- fail "kafka.security.tls: cert and key go together" }}
{{- end }}
{{- if and $s.tls.existingSecret (ne (empty $s.tls.certKey) (empty $s.tls.keyKey)) }}
{{- fail "kafka.security.tls: certKey and keyKey go together" }}
{{- end }}
{{- if and (or $s.tls.existingSecret $s.tls.ca $s.tls.cert) (not (include "weir.kafka.usesTls" .)) }}
{{- fail "kafka.security.tls is set: use kafka.security.protocol ssl or sasl_ssl" }}
{{- end }}
{{- end }}

{{/* The `security` section of a Kafka client config (gateway, tail router). */}}
{{- define "weir.kafka.securityConfig" -}}
{{- $s := .Values.kafka.security }}
{{- $sec := dict "protocol" $s.protocol }}
{{- if include "weir.kafka.usesSasl" . }}
{{- $_ := set $sec "sasl" (dict "mechanism" $s.sasl.mechanism "username" $s.sasl.username "password_file" "/etc/weir/kafka-sasl/password") }}
{{- end }}
{{- if include "weir.kafka.hasTlsFiles" . }}
{{- $tls := dict }}
{{- if include "weir.kafka.tlsCa" . }}
{{- $_ := set $tls "ca_file" "/etc/weir/kafka-tls/ca.crt" }}
{{- end }}
{{- if include "weir.kafka.tlsCert" . }}
{{- $_ := set $tls "cert_file" "/etc/weir/kafka-tls/tls.crt" }}
{{- $_ := set $tls "key_file" "/etc/weir/kafka-tls/tls.key" }}
{{- end }}
{{- $_ := set $sec "tls" $tls }}
{{- end }}
{{- toYaml $sec }}
{{- end }}

{{/* Volumes for the Kafka credentials (pod spec `volumes` items). */}}
{{- define "weir.kafka.volumes" -}}
{{- $s := .Values.kafka.security }}
{{- if include "weir.kafka.usesSasl" . }}
- name: kafka-sasl
  secret:
    secretName: {{ include "weir.kafka.saslSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "weir.kafka.saslSecretKey" . }}
        path: password
{{- end }}
{{- if include "weir.kafka.hasTlsFiles" . }}
- name: kafka-tls
  secret:
    secretName: {{ include "weir.kafka.tlsSecretName" . }}
    defaultMode: 0440
    items:
      {{- if include "weir.kafka.tlsCa" . }}
      - key: {{ if $s.tls.existingSecret }}{{ $s.tls.caKey }}{{ else }}ca.crt{{ end }}
        path: ca.crt
      {{- end }}
      {{- if include "weir.kafka.tlsCert" . }}
      - key: {{ if $s.tls.existingSecret }}{{ $s.tls.certKey }}{{ else }}tls.crt{{ end }}
        path: tls.crt
      - key: {{ if $s.tls.existingSecret }}{{ $s.tls.keyKey }}{{ else }}tls.key{{ end }}
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}

{{/* Mounts for the Kafka credentials (container `volumeMounts` items). */}}
{{- define "weir.kafka.volumeMounts" -}}
{{- if include "weir.kafka.usesSasl" . }}
- name: kafka-sasl
  mountPath: /etc/weir/kafka-sasl
  readOnly: true
{{- end }}
{{- if include "weir.kafka.hasTlsFiles" . }}
- name: kafka-tls
  mountPath: /etc/weir/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Refuses a chart-owned key set inside a component's `config`: (dict "config" .Values.gateway.config "component" "gateway" "keys" (list "admin" ...)). */}}
{{- define "weir.ownedKeys" -}}
{{- range .keys }}
{{- if hasKey $.config . }}
{{- fail (printf "%s.config.%s is set by the chart; use the chart's values for it (see docs/helm.md)" $.component .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whole seconds, rounded up, of a duration in the binaries' syntax ("30s", "1m 30s",
"500ms"); units it does not know count as 0. For checks of grace periods. */}}
{{- define "weir.durationSeconds" -}}
{{- $units := dict "h" 3600.0 "hr" 3600.0 "hour" 3600.0 "hours" 3600.0 "m" 60.0 "min" 60.0 "mins" 60.0 "minute" 60.0 "minutes" 60.0 "s" 1.0 "sec" 1.0 "secs" 1.0 "second" 1.0 "seconds" 1.0 "ms" 0.001 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?\\s*[a-zA-Z]+" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . | float64 -}}
{{- $unit := regexFind "[a-zA-Z]+$" . -}}
{{- $total = addf $total (mulf $n (get $units $unit | default 0.0)) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end }}
