{{- define "knoway.fullname" -}}
{{- if contains "knoway" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-knoway" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "knoway.labels" -}}
app.kubernetes.io/name: knoway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "knoway.selector" -}}
app.kubernetes.io/name: knoway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "knoway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* non-root, read-only root filesystem, no privileges */}}
{{- define "knoway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "knoway.containerSecurityContext" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- /* The Secret (key: password) holding the Redis password: redis.passwordSecret, else
       the one generated for the release's own Redis, else none. */}}
{{- define "knoway.redisPasswordSecret" -}}
{{- if .Values.redis.passwordSecret -}}
{{ .Values.redis.passwordSecret }}
{{- else if .Values.redis.deploy -}}
{{ include "knoway.fullname" . }}-redis-auth
{{- end -}}
{{- end -}}

{{- /* The Redis URL data planes and the controller use: the release's own, or redis.url. */}}
{{- define "knoway.redisURL" -}}
{{- if .Values.redis.deploy -}}
redis://{{ include "knoway.fullname" . }}-redis.{{ .Release.Namespace }}.svc:6379/0
{{- else -}}
{{ .Values.redis.url }}
{{- end -}}
{{- end -}}
