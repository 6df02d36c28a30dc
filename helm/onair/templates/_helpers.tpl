{{/*
Names and labels.
*/}}
{{- define "onair.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "onair.fullname" -}}
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

{{- define "onair.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's objects. Usage: include "onair.componentName" (list $ "gateway") */}}
{{- define "onair.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "onair.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) }}
{{- end }}

{{/* Usage: include "onair.selectorLabels" (list $ "gateway") */}}
{{- define "onair.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "onair.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels for the whole release (no component). */}}
{{- define "onair.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "onair.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Usage: include "onair.labels" (list $ "gateway"), or (list $ "") for release-wide objects. */}}
{{- define "onair.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "onair.chart" $root }}
{{- if index . 1 }}
{{ include "onair.selectorLabels" . }}
{{- else }}
{{ include "onair.releaseSelectorLabels" $root }}
{{- end }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: onair
{{- end }}

{{- define "onair.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "onair.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "onair.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "onair.configMapName" -}}
{{- include "onair.fullname" . }}
{{- end }}

{{- define "onair.secretName" -}}
{{- default (include "onair.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* gRPC URL of a component's Service. Usage: include "onair.grpcUrl" (list $ "registry") */}}
{{- define "onair.grpcUrl" -}}
{{- $root := index . 0 }}
{{- printf "http://%s:%v" (include "onair.componentName" .) $root.Values.ports.grpc }}
{{- end }}

{{/*
A secret the services share: the value from values, else the one in the release's existing Secret, else
a new random one. Usage: include "onair.sharedSecret" (list $ .Values.resumeSecret "ONAIR_RESUME_SECRET")
*/}}
{{- define "onair.sharedSecret" -}}
{{- $root := index . 0 }}
{{- if index . 1 }}
{{- index . 1 }}
{{- else }}
{{- $key := index . 2 }}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "onair.fullname" $root) }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The TURN secret (gateways and TURN servers): turnSecret, else (with turn.enabled) the one in the release's
existing Secret, else a new random one; empty without TURN.
*/}}
{{- define "onair.turnSecret" -}}
{{- if .Values.turnSecret }}
{{- .Values.turnSecret }}
{{- else if .Values.turn.enabled }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "onair.fullname" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "ONAIR_TURN_SECRET") }}
{{- index $existing.data "ONAIR_TURN_SECRET" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/* ICE servers for welcome: gateway.iceServers, plus the embedded TURN server's URLs at publicAddr. */}}
{{- define "onair.iceServers" -}}
{{- $urls := list }}
{{- with .Values.gateway.iceServers }}{{ $urls = append $urls . }}{{ end }}
{{- if .Values.turn.enabled }}
{{- if not .Values.publicAddr }}
{{- fail "turn.enabled needs publicAddr: the address browsers reach the TURN server at" }}
{{- end }}
{{- $a := printf "%s:%v" .Values.publicAddr .Values.ports.turn }}
{{- $urls = append $urls (printf "stun:%s,turn:%s,turn:%s?transport=tcp" $a $a $a) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/* Changes when the secret inputs change (not with a generated resume secret). */}}
{{- define "onair.secretChecksum" -}}
{{- list .Values.existingSecret .Values.redis.url .Values.mongodb.uri .Values.resumeSecret .Values.clusterSecret .Values.auth.secret .Values.turnSecret | toJson | sha256sum }}
{{- end }}

{{/* Components that mount the shared recordings volume: "true" or "". Usage: include "onair.mountsRecordings" "gateway" */}}
{{- define "onair.mountsRecordings" -}}
{{- if has . (list "gateway" "recorder") }}true{{ end }}
{{- end }}

{{/* The recordings PersistentVolumeClaim: recordings.persistence.existingClaim or the chart's own. */}}
{{- define "onair.recordingsClaimName" -}}
{{- default (printf "%s-recordings" (include "onair.fullname" .)) .Values.recordings.persistence.existingClaim }}
{{- end }}

{{/* The CLI contract (files/cli.yaml) as a dict. */}}
{{- define "onair.contract" -}}
{{- .Files.Get "files/cli.yaml" }}
{{- end }}

{{/* --shutdown-grace for a component. Usage: include "onair.shutdownGrace" (list $ "gateway") */}}
{{- define "onair.shutdownGrace" -}}
{{- $root := index . 0 }}
{{- $c := index $root.Values (index . 1) }}
{{- $grace := sub (sub (int $c.terminationGracePeriodSeconds) (int $c.preStopSleepSeconds)) (int $root.Values.shutdownMarginSeconds) }}
{{- if lt $grace 1 }}
{{- fail (printf "%s: terminationGracePeriodSeconds must exceed preStopSleepSeconds + shutdownMarginSeconds" (index . 1)) }}
{{- end }}
{{- printf "%ds" $grace }}
{{- end }}

{{/*
Container ports of a component: its listen ports from the contract, TCP ones by default or those of the
protocol given (a port entry without `protocol` is TCP). Usage: (list $ "gateway"), (list $ "relay" "UDP")
*/}}
{{- define "onair.portNames" -}}
{{- $name := index . 1 }}
{{- $protocol := "TCP" }}
{{- if gt (len .) 2 }}{{ $protocol = index . 2 }}{{ end }}
{{- $contract := include "onair.contract" (index . 0) | fromYaml }}
{{- range $f := $contract.flags }}
{{- if and (eq $f.source "port") (has $name $f.targets) (eq (default "TCP" $f.protocol) $protocol) }}
{{ $f.port }}
{{- end }}
{{- end }}
{{- end }}

{{/* Container env of a component, from the contract. Usage: include "onair.env" (list $ "gateway") */}}
{{- define "onair.env" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $contract := include "onair.contract" $root | fromYaml }}
{{- $c := index $root.Values $name }}
{{- range $f := $contract.flags }}
{{- if and (has $name $f.targets) (not (and $c.hostNetwork (has $name (default list $f.podNetworkOnly)))) }}
{{- if eq $f.source "port" }}
{{- $port := index $root.Values.ports $f.port }}
{{- if not $port }}
{{- fail (printf "%s.enabled needs ports.%s" $name $f.port) }}
{{- end }}
- name: {{ $f.env }}
  {{- if eq (default "TCP" $f.protocol) "TCP" }}
  value: {{ printf "0.0.0.0:%v" $port | quote }}
  {{- else }}
  value: {{ $port | quote }}
  {{- end }}
{{- else if eq $f.source "fieldRef" }}
- name: {{ $f.env }}
  valueFrom:
    fieldRef:
      fieldPath: {{ $f.fieldPath }}
{{- else if eq $f.source "config" }}
{{- if tpl $f.value $root }}
- name: {{ $f.env }}
  valueFrom:
    configMapKeyRef:
      name: {{ include "onair.configMapName" $root }}
      key: {{ $f.env }}
{{- end }}
{{- else if eq $f.source "secret" }}
{{- if or $root.Values.existingSecret (tpl $f.value $root) }}
- name: {{ $f.env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "onair.secretName" $root }}
      key: {{ $f.env }}
      {{- if $f.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- else if eq $f.source "grace" }}
- name: {{ $f.env }}
  value: {{ include "onair.shutdownGrace" (list $root $name) | quote }}
{{- else if ne $f.source "arg" }}
{{- fail (printf "files/cli.yaml: %s has unknown source %q" $f.flag $f.source) }}
{{- end }}
{{- end }}
{{- end }}
{{- with (index $root.Values $name).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Container args of a component, from the contract. */}}
{{- define "onair.args" -}}
{{- $name := index . 1 }}
{{- $contract := include "onair.contract" (index . 0) | fromYaml }}
{{- range $f := $contract.flags }}
{{- if and (eq $f.source "arg") (has $name $f.targets) }}
- {{ $f.flag }}
- {{ $name }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod template shared by the Deployments and the recorder StatefulSet.
Usage: include "onair.podTemplate" (list $ "gateway")
*/}}
{{- define "onair.podTemplate" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $c := index $root.Values $name -}}
metadata:
  labels:
    {{- include "onair.labels" . | nindent 4 }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secret: {{ include "onair.secretChecksum" $root }}
    {{- with $c.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "onair.serviceAccountName" $root }}
  {{- if $c.hostNetwork }}
  # The node's network: WebRTC/TURN/relay ports are the node's own (see values: hostNetwork).
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  {{- end }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $name }}
      image: {{ include "onair.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- include "onair.args" . | trim | nindent 8 }}
      env:
        {{- include "onair.env" . | trim | nindent 8 }}
      ports:
        {{- range $port := include "onair.portNames" . | trim | splitList "\n" }}
        - name: {{ $port }}
          containerPort: {{ index $root.Values.ports $port }}
          protocol: TCP
        {{- if eq $port "turn" }}
        - name: turn-udp
          containerPort: {{ index $root.Values.ports $port }}
          protocol: UDP
        {{- end }}
        {{- end }}
        {{- range $port := include "onair.portNames" (list $root $name "UDP") | trim | splitList "\n" | compact }}
        - name: {{ $port }}-udp
          containerPort: {{ index $root.Values.ports $port }}
          protocol: UDP
        {{- if eq $port "relay" }}
        # ICE-TCP, for browsers whose network blocks UDP: the same port over TCP.
        - name: relay-tcp
          containerPort: {{ index $root.Values.ports $port }}
          protocol: TCP
        {{- end }}
        {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml $root.Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        {{- toYaml $root.Values.probes.readiness | nindent 8 }}
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sleep", "{{ $c.preStopSleepSeconds }}"]
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
        - name: tmp
          mountPath: /tmp
        {{- if include "onair.mountsRecordings" $name }}
        # The shared recordings volume (ONAIR_RECORDINGS_DIR): the recorder writes, the gateway serves.
        - name: recordings
          mountPath: /data/recordings
          {{- if ne $name "recorder" }}
          readOnly: true
          {{- end }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    - name: data
      emptyDir:
        sizeLimit: 1Gi
    {{- if include "onair.mountsRecordings" $name }}
    - name: recordings
      {{- if $root.Values.recordings.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ include "onair.recordingsClaimName" $root }}
        {{- if ne $name "recorder" }}
        readOnly: true
        {{- end }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $root.Values.podSpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: {{ $root.Values.podSpread.topologyKey }}
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "onair.selectorLabels" . | nindent 10 }}
  {{- end }}
{{- end }}
