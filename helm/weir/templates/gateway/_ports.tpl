{{/* The gateway's `ports` map (named as the opentelemetry-collector chart's): the known keys,
checked, in a fixed order. */}}
{{- define "weir.gateway.portNames" -}}
otlp otlp-http metrics
{{- end }}

{{/* Refuses a ports map the gateway cannot serve. */}}
{{- define "weir.gateway.validatePorts" -}}
{{- $p := .Values.gateway.ports }}
{{- if not $p.metrics.enabled }}
{{- fail "gateway.ports.metrics.enabled must stay true: the admin listener serves /metrics and the probes" }}
{{- end }}
{{- if not (or (index $p "otlp").enabled (index $p "otlp-http").enabled) }}
{{- fail "gateway.ports: enable otlp or otlp-http (or both): the gateway needs a receiver" }}
{{- end }}
{{- end }}

{{/* Container `ports` items of the enabled ports. */}}
{{- define "weir.gateway.containerPorts" -}}
{{- $p := .Values.gateway.ports }}
{{- range $name := splitList " " (include "weir.gateway.portNames" .) }}
{{- $port := index $p $name }}
{{- if $port.enabled }}
- name: {{ $name }}
  containerPort: {{ $port.containerPort }}
  protocol: {{ $port.protocol | default "TCP" }}
  {{- with $port.hostPort }}
  hostPort: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Service `ports` items of the enabled ports: (dict "ctx" $ "nodePorts" true|false). */}}
{{- define "weir.gateway.servicePorts" -}}
{{- $p := .ctx.Values.gateway.ports }}
{{- range $name := splitList " " (include "weir.gateway.portNames" .ctx) }}
{{- $port := index $p $name }}
{{- if $port.enabled }}
- name: {{ $name }}
  port: {{ $port.servicePort }}
  targetPort: {{ $name }}
  protocol: {{ $port.protocol | default "TCP" }}
  {{- with $port.appProtocol }}
  appProtocol: {{ . }}
  {{- end }}
  {{- if and $.nodePorts $port.nodePort }}
  nodePort: {{ $port.nodePort }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding gateway.yaml: the chart's, or configMap.existingName. */}}
{{- define "weir.gateway.configMapName" -}}
{{- $c := .Values.gateway.configMap }}
{{- if $c.existingName }}{{ $c.existingName }}
{{- else if not $c.create }}{{ fail "gateway.configMap: with create: false, set existingName (a ConfigMap with the key gateway.yaml)" }}
{{- else }}{{ include "weir.componentName" (dict "ctx" . "component" "gateway") }}
{{- end }}
{{- end }}
