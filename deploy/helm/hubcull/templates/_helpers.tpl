{{- /*
Helpers of the hubcull chart, in the style of z2jh's _helpers.tpl: names, labels, and the
pieces that several templates share (watched namespaces, RBAC rules, the pod template).
*/}}

{{- /* The chart name, or nameOverride. */}}
{{- define "hubcull.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /*
The full name of the objects: fullnameOverride, else "<release>-<name>", or just the release
name when it already contains the chart name (so `helm install hubcull` gives "hubcull").
*/}}
{{- define "hubcull.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "hubcull.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- /* Name of cluster-scoped objects, unique per release namespace. */}}
{{- define "hubcull.clusterName" -}}
{{- printf "%s-%s" (include "hubcull.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "hubcull.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /* Labels that select the operator pods; never change them in an upgrade. */}}
{{- define "hubcull.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hubcull.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- /* Labels of every object. */}}
{{- define "hubcull.labels" -}}
helm.sh/chart: {{ include "hubcull.chart" . }}
{{ include "hubcull.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hubcull
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- /* The ServiceAccount the operator runs as. */}}
{{- define "hubcull.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "hubcull.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- /* Name of the KopfPeering / ClusterKopfPeering object. */}}
{{- define "hubcull.peeringName" -}}
{{- .Values.peering.name | default (include "hubcull.fullname" .) }}
{{- end }}

{{- /* The image reference: repository:tag, or repository@digest. */}}
{{- define "hubcull.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- /*
The namespaces the operator serves in namespaced mode, as a JSON list: watch.namespaces or
the release namespace. Use with `include ... | fromJsonArray`.
*/}}
{{- define "hubcull.watchNamespaces" -}}
{{- .Values.watch.namespaces | default (list .Release.Namespace) | uniq | toJson }}
{{- end }}

{{- /*
Checks of value combinations the schema cannot express well, with messages that say what to
do. Included by the workload template, so every render runs them.
*/}}
{{- define "hubcull.validate" -}}
{{- $v := .Values }}
{{- if and (gt (int $v.replicas) 1) (not $v.peering.enabled) }}
{{- fail (printf "replicas is %d but peering.enabled is false: two operators without kopf peering would both cull. Set peering.enabled=true (one pod culls, the others stand by) or replicas=1." (int $v.replicas)) }}
{{- end }}
{{- if and $v.watch.allNamespaces $v.watch.namespaces }}
{{- fail "watch.allNamespaces=true serves every namespace: leave watch.namespaces empty." }}
{{- end }}
{{- if and $v.peering.enabled (not (semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "peering.enabled needs Kubernetes >= 1.28 (each pod's kopf priority is its apps.kubernetes.io/pod-index label); this cluster is %s." .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and $v.policies (not $v.watch.allNamespaces) }}
{{- if not (has .Release.Namespace (include "hubcull.watchNamespaces" . | fromJsonArray)) }}
{{- fail (printf "policies are created in the release namespace %q, which watch.namespaces does not list: add it, or apply the CullPolicies in a watched namespace yourself." .Release.Namespace) }}
{{- end }}
{{- end }}
{{- if and $v.metrics.enabled (eq (int $v.metrics.port) (int $v.health.port)) }}
{{- fail (printf "metrics.port and health.port are both %d: give the metrics endpoint and kopf's health endpoint different ports." (int $v.health.port)) }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true: there is nothing to scrape otherwise." }}
{{- end }}
{{- if and $v.prometheusRule.enabled (not $v.metrics.enabled) }}
{{- fail "prometheusRule.enabled needs metrics.enabled=true: the alerts read the operator's metrics." }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.apiServer.cidrs) }}
{{- fail "networkPolicy.apiServer.cidrs is empty: the operator could not reach the Kubernetes API server." }}
{{- end }}
{{- end }}

{{- /*
Deep merge of two maps: (list BASE OVERRIDE) -> YAML of BASE with OVERRIDE's keys on top,
maps merged key by key. Unlike sprig's merge/mergeOverwrite it keeps false, 0 and "" from
OVERRIDE (a policy's `dryRun: false` beats `policyDefaults.dryRun: true`).
*/}}
{{- define "hubcull.deepMerge" -}}
{{- $out := deepCopy (index . 0) }}
{{- range $key, $value := index . 1 }}
{{- $old := get $out $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $old) }}
{{- $_ := set $out $key (include "hubcull.deepMerge" (list $old $value) | fromYaml) }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{- /* The arguments of `hubcull run`, one YAML list item per line. */}}
{{- define "hubcull.args" -}}
{{- if .Values.watch.allNamespaces }}
- --all-namespaces
{{- else }}
{{- range include "hubcull.watchNamespaces" . | fromJsonArray }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq .Values.logFormat "json" }}
- --log-format
- json
{{- end }}
{{- if .Values.metrics.enabled }}
- --metrics-port
- {{ .Values.metrics.port | quote }}
{{- end }}
- --liveness
- {{ printf "http://0.0.0.0:%d/healthz" (int .Values.health.port) | quote }}
{{- if .Values.peering.enabled }}
- --peering
- {{ include "hubcull.peeringName" . | quote }}
- --priority
- "$(POD_INDEX)"
{{- else }}
- --standalone
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- /*
RBAC rules of the operator: exactly what hubcull and kopf call, nothing more (see the
comments in templates/rbac.yaml). Argument: the root context.
*/}}
{{- define "hubcull.rbacRules" -}}
# kopf lists and watches CullPolicies and patches them (finalizer, its annotations);
# on a clean shutdown hubcull gets each policy to drop its finalizer from it.
- apiGroups: ["hubcull.io"]
  resources: ["cullpolicies"]
  verbs: ["get", "list", "watch", "patch"]
# hubcull writes each sweep's outcome to the status subresource.
- apiGroups: ["hubcull.io"]
  resources: ["cullpolicies/status"]
  verbs: ["patch"]
# The Hub API token named by spec.hub.tokenSecretRef (and spec.hub.caSecretRef).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Culled, UserCulled, SweepFailed, Throttled: kopf posts core v1 Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.inspectServers }}
{{- include "hubcull.podRules" . }}
{{- end }}
{{- if .Values.watch.allNamespaces }}
# Cluster mode only: kopf (unless run with settings.scanning.disabled) watches CRDs to notice
# the CullPolicy CRD being installed or upgraded at run time. Read-only, no Secrets in it.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
{{- if .Values.peering.enabled }}
# kopf peering: watch the peers and write this pod's keep-alive into the peering object.
- apiGroups: ["kopf.dev"]
  resources: [{{ ternary "clusterkopfpeerings" "kopfpeerings" .Values.watch.allNamespaces | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{- /* The pod template of the Deployment (or the StatefulSet with peering). */}}
{{- define "hubcull.podTemplate" -}}
metadata:
  labels:
    {{- include "hubcull.selectorLabels" . | nindent 4 }}
    # z2jh's Hub NetworkPolicy admits pods with this label to the Hub's API port.
    hub.jupyter.org/network-access-hub: "true"
    {{- if .Values.inspectServers }}
    # z2jh's singleuser NetworkPolicy admits pods with this label to the servers' port.
    hub.jupyter.org/network-access-singleuser: "true"
    {{- end }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "hubcull.serviceAccountName" . }}
  automountServiceAccountToken: true
  {{- with .Values.image.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: hubcull
      image: {{ include "hubcull.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["hubcull", "run"]
      args:
        {{- include "hubcull.args" . | trim | nindent 8 }}
      env:
        # kopf names this pod in peering status and events by POD_ID.
        - name: POD_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        {{- if .Values.peering.enabled }}
        # The StatefulSet ordinal, the kopf priority: the highest live ordinal works.
        - name: POD_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: health
          containerPort: {{ .Values.health.port }}
          protocol: TCP
        {{- if .Values.metrics.enabled }}
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        initialDelaySeconds: 10
        periodSeconds: 20
        timeoutSeconds: 5
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 3
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        # The root filesystem is read-only; Python and its libraries may need a /tmp.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- /*
The pod rules of inspectServers, in the served namespaces and in podNamespaces.
*/}}
{{- define "hubcull.podRules" }}
# inspectServers (spec.kernels via: pods): list the singleuser pods of a policy's namespace
# (component=singleuser-server) to find each server's pod IP and port; get reads one pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
{{- end }}
