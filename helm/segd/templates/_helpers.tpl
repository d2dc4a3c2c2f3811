{{/* The release's resource names, at most 63 characters. */}}
{{- define "segd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "segd.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "segd.labels" -}}
{{ include "segd.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "segd.secretName" -}}
{{- default (include "segd.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "segd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "segd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "segd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Non-root, read-only, no privileges: the pod's and the container's. */}}
{{- define "segd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "segd.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment: settings from the ConfigMap, secrets from the Secret. */}}
{{- define "segd.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "segd.fullname" . }}
env:
  {{- include "segd.databaseEnv" . | nindent 2 }}
  - name: SEGD_READ_DATABASE_URLS
    valueFrom:
      secretKeyRef:
        name: {{ include "segd.secretName" . }}
        key: SEGD_READ_DATABASE_URLS
        optional: true
  - name: SEGD_JWT_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ include "segd.secretName" . }}
        key: SEGD_JWT_SECRET
        optional: true
{{- end -}}

{{/* Where the database is, and how to reach it (also for migrations). */}}
{{- define "segd.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "segd.secretName" . }}
      key: DATABASE_URL
- name: SEGD_SESSION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "segd.secretName" . }}
      key: SEGD_SESSION_DATABASE_URL
      optional: true
{{- end -}}
