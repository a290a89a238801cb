{{/* The components Prometheus scrapes, as "component:values key:port name" (the port serving
/metrics): the gateway's and the tail router's admin listener, the control plane's REST port. */}}
{{- define "weir.scrapeTargets" -}}
gateway:gateway:metrics tail-router:tailRouter:admin control-plane:controlPlane:api
{{- end }}

{{/* One scrape endpoint (ServiceMonitor `endpoints` / PodMonitor `podMetricsEndpoints` item):
(dict "ctx" $ "monitor" .Values.serviceMonitor "port" "metrics" "component" "gateway"). */}}
{{- define "weir.scrapeEndpoint" -}}
- port: {{ .port }}
  path: /metrics
  {{- if and (eq .component "control-plane") .ctx.Values.controlPlane.tls.existingSecret }}
  # The control plane serves its REST port over TLS (controlPlane.tls).
  scheme: https
  {{- end }}
  interval: {{ .monitor.interval }}
  scrapeTimeout: {{ .monitor.scrapeTimeout }}
  {{- with .monitor.relabelings }}
  relabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .monitor.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
