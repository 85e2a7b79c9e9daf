{{/* The agent's name: <release>-agent, or etcdguard-agent for a release called etcdguard. */}}
{{- define "etcdguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "etcdguard.agentName" -}}
{{- printf "%s-agent" (include "etcdguard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdguard.operatorName" -}}
{{- printf "%s-operator" (include "etcdguard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: etcdguard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "etcdguard.agentSelector" -}}
app.kubernetes.io/name: etcdguard-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etcdguard.operatorSelector" -}}
app.kubernetes.io/name: etcdguard-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etcdguard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "etcdguard.operatorImage" -}}
{{- $repo := default .Values.image.repository .Values.operator.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.operator.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "etcdguard.secretName" -}}
{{- default (printf "%s-credentials" (include "etcdguard.fullname" .)) .Values.repository.credentialsSecret -}}
{{- end -}}
