{{/* Names, labels and shared pieces of the pintle chart. */}}
{{- define "pintle.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pintle.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: (dict "ctx" $ "c" "gateway") */}}
{{- define "pintle.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .c }}
{{- end -}}

{{- define "pintle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pintle.transformerImage" -}}
{{- printf "%s:%s" .Values.transformerImage.repository (default .Chart.AppVersion .Values.transformerImage.tag) -}}
{{- end -}}

{{/* the Secret and key holding the DSN */}}
{{- define "pintle.dsnSecret" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecret }}{{- else -}}{{ include "pintle.fullname" . }}{{- end -}}
{{- end -}}
{{- define "pintle.dsnKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}dsn{{- end -}}
{{- end -}}
{{- define "pintle.hasDsn" -}}
{{- if or .Values.database.existingSecret .Values.database.dsn .Values.postgresql.enabled -}}true{{- end -}}
{{- end -}}

{{- define "pintle.tokenSecret" -}}
{{- if .Values.workspace.controlPlaneTokenSecret -}}{{ .Values.workspace.controlPlaneTokenSecret }}{{- else -}}{{ include "pintle.fullname" . }}{{- end -}}
{{- end -}}
{{- define "pintle.tokenKey" -}}
{{- if .Values.workspace.controlPlaneTokenSecret -}}{{ .Values.workspace.controlPlaneTokenSecretKey }}{{- else -}}control-plane-token{{- end -}}
{{- end -}}
{{- define "pintle.hasToken" -}}
{{- if or .Values.workspace.controlPlaneTokenSecret .Values.workspace.controlPlaneToken -}}true{{- end -}}
{{- end -}}

{{/* environment every C process gets: DSN, token, schema (also for the migrate Job) */}}
{{- define "pintle.secretEnv" -}}
{{- if include "pintle.hasDsn" . }}
- name: PINTLE_DB_DSN
  valueFrom:
    secretKeyRef:
      name: {{ include "pintle.dsnSecret" . }}
      key: {{ include "pintle.dsnKey" . }}
{{- end }}
{{- if include "pintle.hasToken" . }}
- name: PINTLE_WORKSPACE_CONTROL_PLANE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "pintle.tokenSecret" . }}
      key: {{ include "pintle.tokenKey" . }}
{{- end }}
{{- end -}}

{{/* admin (health and metrics) port of a C component */}}
{{- define "pintle.port" -}}
{{- $ports := dict "gateway" 8080 "processor" 8086 "router" 8087 "batchrouter" (int .ctx.Values.batchrouter.adminPort) -}}
{{- get $ports .c -}}
{{- end -}}

{{/* seconds Kubernetes waits after SIGTERM: preStop + the service's own shutdown bound + 5 s margin */}}
{{- define "pintle.grace" -}}
{{- $v := .v -}}
{{- add (int $v.preStopSleepSeconds) (div (add (int $v.shutdownTimeoutMs) 999) 1000) 5 -}}
{{- end -}}

{{/* one libconfig value */}}
{{- define "pintle.confValue" -}}
{{- if kindIs "string" . -}}{{ . | toJson }}{{- else if kindIs "bool" . -}}{{ . }}{{- else if kindIs "float64" . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* pintle.conf: the user's config merged under the keys the chart owns */}}
{{- define "pintle.conf" -}}
{{- $tf := printf "http://%s-transformer:%d" (include "pintle.fullname" .) (int .Values.transformer.port) -}}
{{- $owned := dict
  "log" (dict "level" .Values.logLevel)
  "db" (dict "schema" .Values.database.schema)
  "queue" (dict "partitions" (int .Values.partitions))
  "workspace" (dict "path" "/etc/pintle/workspace/workspaceConfig.json" "control_plane_url" .Values.workspace.controlPlaneUrl)
  "gateway" (dict "listen_address" "0.0.0.0" "port" 8080 "workers" (int .Values.gateway.workers) "shutdown_timeout_ms" (int .Values.gateway.shutdownTimeoutMs))
  "processor" (dict "listen_address" "0.0.0.0" "admin_port" 8086 "shutdown_timeout_ms" (int .Values.processor.shutdownTimeoutMs) "transformer_url" $tf)
  "router" (dict "listen_address" "0.0.0.0" "admin_port" 8087 "shutdown_timeout_ms" (int .Values.router.shutdownTimeoutMs) "transformer_url" $tf)
  "batchrouter" (dict "listen_address" "0.0.0.0" "admin_port" (int .Values.batchrouter.adminPort) "shutdown_timeout_ms" (int .Values.batchrouter.shutdownTimeoutMs))
  "hints" (dict "enabled" .Values.hints.enabled "bind" (printf "tcp://0.0.0.0:%d" (int .Values.hints.port)))
-}}
{{- $conf := mergeOverwrite (deepCopy .Values.config) $owned -}}
# pintle.conf rendered by the pintle Helm chart (values: config and the chart's own keys)
{{- range $section := keys $conf | sortAlpha }}
{{ $section }} = {
{{- $keys := get $conf $section }}
{{- range $k := keys $keys | sortAlpha }}
  {{ $k }} = {{ include "pintle.confValue" (get $keys $k) }};
{{- end }}
};
{{- end }}
{{- end -}}

{{- define "pintle.podSecurity" -}}
{{- with .Values.podSecurityContext }}
securityContext:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* scheduling of a component: (dict "ctx" $ "c" name "v" values) */}}
{{- define "pintle.scheduling" -}}
{{- with .v.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- if .v.topologySpreadConstraints }}
topologySpreadConstraints:
{{- toYaml .v.topologySpreadConstraints | nindent 2 }}
{{- else if .ctx.Values.spread.enabled }}
topologySpreadConstraints:
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: {{ $.ctx.Values.spread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $.ctx.Values.spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "pintle.selector" (dict "ctx" $.ctx "c" $.c) | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* the bundled Postgres's password: given, else the one already in its Secret, else random */}}
{{- define "pintle.pgPassword" -}}
{{- if .Values.postgresql.password -}}
{{- .Values.postgresql.password -}}
{{- else -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace (printf "%s-postgresql" (include "pintle.fullname" .)) -}}
{{- if and $s $s.data (hasKey $s.data "password") -}}
{{- index $s.data "password" | b64dec -}}
{{- else -}}
{{- $_ := required "internal" (include "pintle.pgPasswordMemo" .) -}}
{{- .Values._pgPasswordMemo -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{/* one random password per render, shared by every template that asks */}}
{{- define "pintle.pgPasswordMemo" -}}
{{- if not (hasKey .Values "_pgPasswordMemo") -}}
{{- $_ := set .Values "_pgPasswordMemo" (randAlphaNum 24) -}}
{{- end -}}
ok
{{- end -}}
