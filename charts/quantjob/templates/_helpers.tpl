{{/*
Names. The full name is "<release>-quantjob", or the release name when it already holds
"quantjob" (`helm install quantjob ...` gives quantjob-operator, quantjob-webhook, ...).
*/}}
{{- define "quantjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quantjob.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "quantjob.operatorName" -}}
{{- printf "%s-operator" (include "quantjob.fullname" .) }}
{{- end }}

{{- define "quantjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quantjob.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quantjob.webhookService" -}}
{{- printf "%s-webhook" (include "quantjob.fullname" .) }}
{{- end }}

{{- define "quantjob.webhookConfiguration" -}}
{{- default (printf "%s.%s.quantjob.io" (include "quantjob.fullname" .) .Release.Namespace) .Values.webhook.configurationName }}
{{- end }}

{{- define "quantjob.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "quantjob.fullname" .) }}
{{- end }}

{{- define "quantjob.webhookCertDir" -}}
/etc/quantjob/webhook-tls
{{- end }}

{{- define "quantjob.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "quantjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator pod's labels; the Services and the ServiceMonitor select on them. */}}
{{- define "quantjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quantjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "quantjob.image" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The worker pod overlay the operator applies to every pod it creates (QUANTJOB_POD_DEFAULTS):
device-node scheduling and extra volumes, as JSON.
*/}}
{{- define "quantjob.podDefaults" -}}
{{- $w := .Values.worker }}
{{- $overlay := dict }}
{{- with $w.nodeSelector }}{{ $_ := set $overlay "nodeSelector" . }}{{ end }}
{{- with $w.tolerations }}{{ $_ := set $overlay "tolerations" . }}{{ end }}
{{- with $w.affinity }}{{ $_ := set $overlay "affinity" . }}{{ end }}
{{- with $w.extraVolumes }}{{ $_ := set $overlay "volumes" . }}{{ end }}
{{- with $w.extraVolumeMounts }}{{ $_ := set $overlay "volumeMounts" . }}{{ end }}
{{- with $w.priorityClassName }}{{ $_ := set $overlay "priorityClassName" . }}{{ end }}
{{- with $w.podLabels }}{{ $_ := set $overlay "labels" . }}{{ end }}
{{- with $w.podAnnotations }}{{ $_ := set $overlay "annotations" . }}{{ end }}
{{- with $w.supplementalGroups }}{{ $_ := set $overlay "supplementalGroups" . }}{{ end }}
{{- with $w.env }}{{ $_ := set $overlay "env" . }}{{ end }}
{{- toJson $overlay }}
{{- end }}

{{/*
Values -> the operator's settings. This is the one place that maps them: every setting is a
QUANTJOB_* environment variable read by quantjob.operator.settings (docs/operator.md lists them),
and tests/chart/test_chart.py loads the rendered list with the operator's own load_settings.
*/}}
{{- define "quantjob.operatorEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: QUANTJOB_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
- name: QUANTJOB_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
- name: QUANTJOB_HEALTH_PORT
  value: {{ .Values.operator.healthPort | quote }}
- name: QUANTJOB_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | quote }}
- name: QUANTJOB_WORKER_IMAGE
  value: {{ include "quantjob.image" (list .Values.worker.image .) | quote }}
- name: QUANTJOB_NPU_RESOURCE_NAME
  value: {{ .Values.worker.devices.npu.resourceName | quote }}
- name: QUANTJOB_CUDA_RESOURCE_NAME
  value: {{ .Values.worker.devices.cuda.resourceName | quote }}
- name: QUANTJOB_NPU_RUNTIME_CLASS
  value: {{ .Values.worker.devices.npu.runtimeClassName | quote }}
- name: QUANTJOB_MASTER_PORT
  value: {{ .Values.worker.masterPort | quote }}
- name: QUANTJOB_POD_DEFAULTS
  value: {{ include "quantjob.podDefaults" . | quote }}
- name: QUANTJOB_GANG_SCHEDULING
  value: {{ .Values.worker.gangScheduling | quote }}
- name: QUANTJOB_VOLCANO_SCHEDULER
  value: {{ .Values.worker.volcanoScheduler | quote }}
- name: QUANTJOB_COSCHEDULING_SCHEDULER
  value: {{ .Values.worker.coschedulingScheduler | quote }}
- name: QUANTJOB_PROGRESS_REPORTING
  value: {{ .Values.worker.progressReporting | quote }}
- name: QUANTJOB_NETWORK_POLICY
  value: {{ .Values.worker.networkPolicy | quote }}
- name: QUANTJOB_RESYNC_SECONDS
  value: {{ .Values.operator.resyncSeconds | quote }}
- name: QUANTJOB_ALLOW_TRUST_REMOTE_CODE
  value: {{ .Values.policy.allowTrustRemoteCode | quote }}
- name: QUANTJOB_ALLOW_CUSTOM_IMAGE
  value: {{ .Values.policy.allowCustomImage | quote }}
- name: QUANTJOB_ENV_ALLOW
  value: {{ join "," .Values.policy.envAllow | quote }}
- name: QUANTJOB_ENV_DENY
  value: {{ join "," .Values.policy.envDeny | quote }}
- name: QUANTJOB_WEBHOOK_ENABLED
  value: {{ .Values.webhook.enabled | quote }}
{{- if .Values.webhook.enabled }}
- name: QUANTJOB_WEBHOOK_PORT
  value: {{ .Values.webhook.port | quote }}
- name: QUANTJOB_WEBHOOK_FAILURE_POLICY
  value: {{ .Values.webhook.failurePolicy | quote }}
- name: QUANTJOB_WEBHOOK_TLS
  value: {{ ternary "files" "self-signed" .Values.webhook.certManager.enabled | quote }}
- name: QUANTJOB_WEBHOOK_CERT_DIR
  value: {{ include "quantjob.webhookCertDir" . | quote }}
- name: QUANTJOB_WEBHOOK_SERVICE
  value: {{ include "quantjob.webhookService" . | quote }}
- name: QUANTJOB_WEBHOOK_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: QUANTJOB_WEBHOOK_CONFIGURATION
  value: {{ include "quantjob.webhookConfiguration" . | quote }}
{{- end }}
{{- end }}

{{/*
The namespaced rules of the operator: a ClusterRole, or a Role in each watched namespace. They are
quantjob.operator.rbac.namespaced_rules (tests/chart/test_chart.py keeps the two equal).
*/}}
{{- define "quantjob.namespacedRules" -}}
# the QuantJobs: read them; write only their status (which also lets the operator grant that much)
- apiGroups: [quantjob.io]
  resources: [quantjobs]
  verbs: [get, list, watch]
- apiGroups: [quantjob.io]
  resources: [quantjobs/status]
  verbs: [get, patch]
# blockOwnerDeletion on the children's owner references (a foreground delete waits for the ranks)
# needs this under OwnerReferencesPermissionEnforcement; the operator writes no finalizer
- apiGroups: [quantjob.io]
  resources: [quantjobs/finalizers]
  verbs: [update]
# the children: one Job per attempt (a group that never fully started is deleted), the progress
# ConfigMap it mirrors (and grants rank 0 patch on), Service, worker ServiceAccount and Role
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps]
{{- if .Values.worker.progressReporting }}
  verbs: [get, list, watch, create, patch]
{{- else }}
  # no progress ConfigMap to watch, nothing to grant
  verbs: [get, create]
{{- end }}
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# the pods' states and termination messages; events about them and about the QuantJobs
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
# the claims' access modes: can every rank mount them (a ReadWriteOnce claim across nodes cannot)
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [list, create]
# gangs: Volcano's and scheduler-plugins' PodGroups
- apiGroups: [scheduling.volcano.sh, scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [get, create]
{{- if .Values.worker.networkPolicy }}
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create]
{{- end }}
{{- end }}

{{/* Checks no JSON schema can express; `helm install` stops with the message. */}}
{{- define "quantjob.validate" -}}
{{- $ports := dict "operator.healthPort" .Values.operator.healthPort }}
{{- if .Values.webhook.enabled }}{{ $_ := set $ports "webhook.port" .Values.webhook.port }}{{ end }}
{{- if .Values.metrics.enabled }}{{ $_ := set $ports "metrics.port" .Values.metrics.port }}{{ end }}
{{- $seen := dict }}
{{- range $field := keys $ports | sortAlpha }}
{{- $port := toString (get $ports $field) }}
{{- if hasKey $seen $port }}
{{- fail (printf "%s and %s are both %s: the operator serves each endpoint on its own port" (get $seen $port) $field $port) }}
{{- end }}
{{- $_ := set $seen $port $field }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: true (the ServiceMonitor scrapes the metrics Service)" }}
{{- end }}
{{- $volumes := list }}
{{- range .Values.worker.extraVolumes }}{{ $volumes = append $volumes .name }}{{ end }}
{{- range $i, $mount := .Values.worker.extraVolumeMounts }}
{{- if not (has $mount.name $volumes) }}
{{- fail (printf "worker.extraVolumeMounts[%d] mounts volume %q, which worker.extraVolumes does not define" $i $mount.name) }}
{{- end }}
{{- end }}
{{- end }}
