{{/* Names and labels. */}}
{{- define "auditnorm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "auditnorm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "auditnorm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "auditnorm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auditnorm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "auditnorm.labels" -}}
helm.sh/chart: {{ include "auditnorm.chart" . }}
{{ include "auditnorm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: normalizer
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "auditnorm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "auditnorm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "auditnorm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the container. The image ships the built-in tables in /etc/auditnorm/mappings;
     overrides are mounted over that directory. */}}
{{- define "auditnorm.configDir" -}}/etc/auditnorm/config{{- end -}}
{{- define "auditnorm.mappingsDir" -}}/etc/auditnorm/mappings{{- end -}}
{{- define "auditnorm.redactionDir" -}}/etc/auditnorm/redaction{{- end -}}
{{- define "auditnorm.hashKeyEnv" -}}AUDITNORM_REDACTION_HASH_KEY{{- end -}}

{{/* Drain timeout + margin: how long Kubernetes waits after SIGTERM. */}}
{{- define "auditnorm.terminationGracePeriodSeconds" -}}
{{- add (int .Values.pipeline.drainTimeoutSeconds) (int .Values.terminationGraceMarginSeconds) -}}
{{- end -}}

{{/* The environment variable that carries a secret librdkafka option.
     Args: dict "prefix" "KAFKA" "key" "sasl.password" -> AUDITNORM_KAFKA_SASL_PASSWORD */}}
{{- define "auditnorm.secretEnvName" -}}
{{- printf "AUDITNORM_%s_%s" .prefix (regexReplaceAll "[^A-Z0-9]+" (upper .key) "_") -}}
{{- end -}}

{{/* Every Kafka client section that can carry secretOptions, as a list of
     {prefix, at, secretOptions}; only the sections the config uses. */}}
{{- define "auditnorm.kafkaSecretSections" -}}
{{- $v := .Values -}}
{{- $out := list -}}
{{- if and $v.kafka.brokers (or (eq $v.input.type "kafka") (eq $v.output.type "kafka") (eq $v.deadLetter.type "kafka")) -}}
{{- $out = append $out (dict "prefix" "KAFKA" "at" "kafka" "secretOptions" ($v.kafka.secretOptions | default dict)) -}}
{{- end -}}
{{- if eq $v.input.type "kafka" -}}
{{- $out = append $out (dict "prefix" "INPUT_KAFKA" "at" "input.kafka" "secretOptions" ($v.input.kafka.secretOptions | default dict)) -}}
{{- end -}}
{{- if eq $v.output.type "kafka" -}}
{{- $out = append $out (dict "prefix" "OUTPUT_KAFKA" "at" "output.kafka" "secretOptions" ($v.output.kafka.secretOptions | default dict)) -}}
{{- end -}}
{{- if eq $v.deadLetter.type "kafka" -}}
{{- $out = append $out (dict "prefix" "DEAD_LETTER_KAFKA" "at" "deadLetter.kafka" "secretOptions" ($v.deadLetter.kafka.secretOptions | default dict)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* librdkafka options of one section: `options` plus `secretOptions` as ${VAR} references.
     Args: dict "at" "kafka" "prefix" "KAFKA" "options" {...} "secretOptions" {...}; returns JSON. */}}
{{- define "auditnorm.kafkaOptions" -}}
{{- $out := dict -}}
{{- range $k, $v := (.options | default dict) -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- range $k, $ref := (.secretOptions | default dict) -}}
{{- if hasKey $out $k -}}
{{- fail (printf "%s: librdkafka option %q is set in both options and secretOptions; keep the secretOptions one" $.at $k) -}}
{{- end -}}
{{- $_ := set $out $k (printf "${%s}" (include "auditnorm.secretEnvName" (dict "prefix" $.prefix "key" $k))) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A Kafka endpoint (input consumer, output or dead-letter producer): the fields it shares. */}}
{{- define "auditnorm.kafkaEndpoint" -}}
{{- $s := .section -}}
{{- $out := dict -}}
{{- if $s.brokers -}}
{{- $_ := set $out "brokers" $s.brokers -}}
{{- else if not .root.Values.kafka.brokers -}}
{{- fail (printf "%s: no brokers: set %s.brokers or kafka.brokers" .at .at) -}}
{{- end -}}
{{- $opts := include "auditnorm.kafkaOptions" (dict "at" .at "prefix" .prefix "options" $s.options "secretOptions" $s.secretOptions) | fromJson -}}
{{- if $opts -}}
{{- $_ := set $out "options" $opts -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A Kinesis stream (input, output or dead letters): `stream` from streamName or streamArn
     (exactly one), `region` and `endpoint` when set. Args: dict "at" "input.kinesis" "section"
     {...}; returns JSON. */}}
{{- define "auditnorm.kinesisStream" -}}
{{- $s := .section -}}
{{- $out := dict -}}
{{- if and $s.streamName $s.streamArn -}}
{{- fail (printf "%s: set streamName or streamArn, not both" .at) -}}
{{- else if $s.streamName -}}
{{- $_ := set $out "stream" $s.streamName -}}
{{- else if $s.streamArn -}}
{{- $_ := set $out "stream" $s.streamArn -}}
{{- $arnRegion := index (splitList ":" $s.streamArn) 3 -}}
{{- if and $s.region (ne $s.region $arnRegion) -}}
{{- fail (printf "%s.region %q differs from the streamArn's region %q; leave region empty" .at $s.region $arnRegion) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "%s: set streamName or streamArn" .at) -}}
{{- end -}}
{{- if $s.region -}}{{- $_ := set $out "region" $s.region -}}{{- end -}}
{{- if $s.endpoint -}}{{- $_ := set $out "endpoint" $s.endpoint -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* What identifies a rendered Kinesis stream section: "name|region|endpoint" (the name and
     region taken from an ARN), to refuse writing to the stream that is read. */}}
{{- define "auditnorm.kinesisStreamKey" -}}
{{- $name := .stream -}}
{{- $region := .region | default "" -}}
{{- if hasPrefix "arn:" .stream -}}
{{- $name = regexReplaceAll "^.*:stream/" .stream "" -}}
{{- $region = .region | default (index (splitList ":" .stream) 3) -}}
{{- end -}}
{{- printf "%s|%s|%s" $name $region (.endpoint | default "") -}}
{{- end -}}

{{/* A duration (a whole number and ms, s, m or h) in milliseconds. */}}
{{- define "auditnorm.durationMs" -}}
{{- $n := regexFind "^[0-9]+" . | int64 -}}
{{- $unit := regexReplaceAll "^[0-9]+" . "" -}}
{{- $per := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $unit | default 0 -}}
{{- mul $n $per -}}
{{- end -}}

{{/* The auditnorm config file, as a dict (JSON); see src/config.rs. */}}
{{- define "auditnorm.configDict" -}}
{{- $v := .Values -}}
{{- $cfg := dict -}}

{{- /* kafka: the shared cluster */ -}}
{{- $sharedOpts := include "auditnorm.kafkaOptions" (dict "at" "kafka" "prefix" "KAFKA" "options" $v.kafka.options "secretOptions" $v.kafka.secretOptions) | fromJson -}}
{{- $usesKafka := or (eq $v.input.type "kafka") (eq $v.output.type "kafka") (eq $v.deadLetter.type "kafka") -}}
{{- if and $v.kafka.brokers $usesKafka -}}
{{- $k := dict "brokers" $v.kafka.brokers -}}
{{- if $sharedOpts -}}{{- $_ := set $k "options" $sharedOpts -}}{{- end -}}
{{- $_ := set $cfg "kafka" $k -}}
{{- else if and $sharedOpts $usesKafka -}}
{{- fail "kafka.options / kafka.secretOptions need kafka.brokers (the shared cluster); put per-endpoint options under input.kafka, output.kafka or deadLetter.kafka instead" -}}
{{- end -}}

{{- /* input: exactly one kind */ -}}
{{- $inputStream := "" -}}
{{- if eq $v.input.type "kafka" -}}
{{- $in := $v.input.kafka -}}
{{- if not $in.topics -}}{{- fail "input.kafka.topics: name at least one topic" -}}{{- end -}}
{{- $k := include "auditnorm.kafkaEndpoint" (dict "root" . "section" $in "at" "input.kafka" "prefix" "INPUT_KAFKA") | fromJson -}}
{{- $_ := set $k "group" $in.group -}}
{{- $_ := set $k "topics" $in.topics -}}
{{- $_ := set $cfg "input" (dict "kafka" $k) -}}
{{- else if eq $v.input.type "kinesis" -}}
{{- $in := $v.input.kinesis -}}
{{- $k := include "auditnorm.kinesisStream" (dict "at" "input.kinesis" "section" $in) | fromJson -}}
{{- $inputStream = include "auditnorm.kinesisStreamKey" $k -}}
{{- $_ := set $k "source" $in.source -}}
{{- $_ := set $k "starting_position" $in.startingPosition -}}
{{- if eq $in.startingPosition "at_timestamp" -}}
{{- if not $in.startingTimestamp -}}{{- fail "input.kinesis.startingPosition at_timestamp needs input.kinesis.startingTimestamp (RFC 3339)" -}}{{- end -}}
{{- $_ := set $k "starting_timestamp" $in.startingTimestamp -}}
{{- else if $in.startingTimestamp -}}
{{- fail "input.kinesis.startingTimestamp is only used with startingPosition at_timestamp" -}}
{{- end -}}
{{- $_ := set $k "poll_interval" $in.pollInterval -}}
{{- $_ := set $k "poll_limit" (int $in.pollLimit) -}}
{{- if $in.enhancedFanOut -}}{{- $_ := set $k "enhanced_fan_out" $in.enhancedFanOut -}}{{- end -}}
{{- range $name := list "leaseDuration" "shardSyncInterval" -}}
{{- if lt (int64 (include "auditnorm.durationMs" (get $in $name))) 300 -}}
{{- fail (printf "input.kinesis.%s %q: must be at least 300ms" $name (get $in $name)) -}}
{{- end -}}
{{- end -}}
{{- $cp := $in.checkpoint -}}
{{- if eq $cp.type "dynamodb" -}}
{{- if not $cp.dynamodb.leaseTable -}}{{- fail "input.kinesis.checkpoint.dynamodb.leaseTable: name the DynamoDB lease table" -}}{{- end -}}
{{- $d := dict "table" $cp.dynamodb.leaseTable -}}
{{- if $cp.dynamodb.region -}}{{- $_ := set $d "region" $cp.dynamodb.region -}}{{- end -}}
{{- if $cp.dynamodb.endpoint -}}{{- $_ := set $d "endpoint" $cp.dynamodb.endpoint -}}{{- end -}}
{{- $_ := set $k "leases" (dict "dynamodb" $d) -}}
{{- else -}}
{{- if ne $v.workload.kind "StatefulSet" -}}
{{- fail "input.kinesis.checkpoint.type file keeps checkpoints on a volume: set workload.kind StatefulSet" -}}
{{- end -}}
{{- if ne (int $v.replicaCount) 1 -}}
{{- fail "input.kinesis.checkpoint.type file is local to one pod (no shared shard leases): set replicaCount 1, or use the dynamodb lease table" -}}
{{- end -}}
{{- $_ := set $k "leases" (dict "file" (printf "%s/%s" (trimSuffix "/" $v.workload.persistence.mountPath) $cp.file.name)) -}}
{{- end -}}
{{- $_ := set $k "lease_duration" $in.leaseDuration -}}
{{- $_ := set $k "shard_sync_interval" $in.shardSyncInterval -}}
{{- $_ := set $cfg "input" (dict "kinesis" $k) -}}
{{- end -}}

{{- /* output */ -}}
{{- if eq $v.output.type "kafka" -}}
{{- $k := include "auditnorm.kafkaEndpoint" (dict "root" . "section" $v.output.kafka "at" "output.kafka" "prefix" "OUTPUT_KAFKA") | fromJson -}}
{{- $_ := set $k "topic" $v.output.kafka.topic -}}
{{- $_ := set $k "partitioning" $v.output.kafka.partitioning -}}
{{- $_ := set $cfg "output" (dict "kafka" $k) -}}
{{- else if eq $v.output.type "kinesis" -}}
{{- $k := include "auditnorm.kinesisStream" (dict "at" "output.kinesis" "section" $v.output.kinesis) | fromJson -}}
{{- if eq (include "auditnorm.kinesisStreamKey" $k) $inputStream -}}
{{- fail (printf "output.kinesis: %q is also the input stream: the pipeline would read its own writes" $k.stream) -}}
{{- end -}}
{{- $_ := set $k "linger" $v.output.kinesis.linger -}}
{{- $_ := set $cfg "output" (dict "kinesis" $k) -}}
{{- else -}}
{{- $_ := set $cfg "output" (dict "file" $v.output.file) -}}
{{- end -}}

{{- /* dead_letter */ -}}
{{- if eq $v.deadLetter.type "kafka" -}}
{{- $k := include "auditnorm.kafkaEndpoint" (dict "root" . "section" $v.deadLetter.kafka "at" "deadLetter.kafka" "prefix" "DEAD_LETTER_KAFKA") | fromJson -}}
{{- $_ := set $k "topic" $v.deadLetter.kafka.topic -}}
{{- $_ := set $cfg "dead_letter" (dict "kafka" $k) -}}
{{- else if eq $v.deadLetter.type "kinesis" -}}
{{- $k := include "auditnorm.kinesisStream" (dict "at" "deadLetter.kinesis" "section" $v.deadLetter.kinesis) | fromJson -}}
{{- if eq (include "auditnorm.kinesisStreamKey" $k) $inputStream -}}
{{- fail (printf "deadLetter.kinesis: %q is also the input stream: the pipeline would read its own writes" $k.stream) -}}
{{- end -}}
{{- if and $cfg.output.kinesis (eq (include "auditnorm.kinesisStreamKey" $k) (include "auditnorm.kinesisStreamKey" $cfg.output.kinesis)) -}}
{{- fail (printf "deadLetter.kinesis: %q is also the output stream: name a separate dead-letter stream" $k.stream) -}}
{{- end -}}
{{- $_ := set $k "linger" $v.deadLetter.kinesis.linger -}}
{{- $_ := set $cfg "dead_letter" (dict "kinesis" $k) -}}
{{- else -}}
{{- $_ := set $cfg "dead_letter" (dict "file" $v.deadLetter.file) -}}
{{- end -}}

{{- /* pipeline: drain_timeout from the same value as terminationGracePeriodSeconds */ -}}
{{- $p := $v.pipeline -}}
{{- $_ := set $cfg "pipeline" (dict
      "commit_interval" $p.commitInterval
      "in_flight" (int $p.inFlight)
      "drain_timeout" (printf "%ds" (int $p.drainTimeoutSeconds))
      "delivery_timeout" $p.deliveryTimeout
      "retry" (dict "budget" (int $p.retry.budget) "backoff" $p.retry.backoff "max_backoff" $p.retry.maxBackoff)) -}}

{{- /* mappings: only when tables are overridden (else the built-in ones) */ -}}
{{- if $v.mappings.overrides -}}
{{- $_ := set $cfg "mappings" (include "auditnorm.mappingsDir" .) -}}
{{- end -}}

{{- /* redaction: written only when it differs from auditnorm's defaults (built-in rules, no
       hash key, dead letters redacted). */ -}}
{{- $r := $v.redaction -}}
{{- if or (not $r.enabled) (not $r.builtinRules) $r.rules $r.hashKey.secretName $r.keepRawDeadLetters -}}
{{- $red := dict -}}
{{- if not $r.enabled -}}
{{- $_ := set $red "enabled" false -}}
{{- else -}}
{{- if not $r.builtinRules -}}
{{- if not $r.rules -}}{{- fail "redaction.builtinRules false needs rule files in redaction.rules (or set redaction.enabled false)" -}}{{- end -}}
{{- $_ := set $red "builtin_rules" false -}}
{{- end -}}
{{- if $r.rules -}}
{{- $files := list -}}
{{- range $name, $_ := $r.rules -}}
{{- $files = append $files (printf "%s/%s" (include "auditnorm.redactionDir" $) $name) -}}
{{- end -}}
{{- $_ := set $red "rules" $files -}}
{{- end -}}
{{- if $r.hashKey.secretName -}}
{{- $_ := set $red "hash_key_env" (include "auditnorm.hashKeyEnv" .) -}}
{{- end -}}
{{- if $r.keepRawDeadLetters -}}
{{- $_ := set $red "keep_raw_dead_letters" true -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "redaction" $red -}}
{{- end -}}

{{- /* metrics, /healthz, /readyz */ -}}
{{- $_ := set $cfg "metrics" (dict "listen" (printf "%s:%d" $v.metrics.listenAddress (int $v.metrics.port)) "path" $v.metrics.path "stall_timeout" $v.metrics.stallTimeout) -}}

{{- toJson $cfg -}}
{{- end -}}

{{/* The config file text. */}}
{{- define "auditnorm.configYaml" -}}
# auditnorm run configuration, rendered by the auditnorm Helm chart from its values.
# Schema: schemas/config.schema.json. Secrets are ${VAR} references to the pod's environment.
{{- $cfg := include "auditnorm.configDict" . | fromJson -}}
{{- $order := list "kafka" "input" "output" "dead_letter" "pipeline" "mappings" "redaction" "metrics" -}}
{{- range $key, $_ := $cfg -}}
{{- if not (has $key $order) -}}{{- fail (printf "internal: config key %q has no place in auditnorm.configYaml" $key) -}}{{- end -}}
{{- end -}}
{{- range $key := $order -}}
{{- if hasKey $cfg $key }}
{{ dict $key (get $cfg $key) | toYaml }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment variables: secret librdkafka options and the redaction hash key, then env. */}}
{{- define "auditnorm.env" -}}
{{- $env := list -}}
{{- range $section := include "auditnorm.kafkaSecretSections" . | fromJsonArray -}}
{{- range $key, $ref := $section.secretOptions -}}
{{- $env = append $env (dict
      "name" (include "auditnorm.secretEnvName" (dict "prefix" $section.prefix "key" $key))
      "valueFrom" (dict "secretKeyRef" (dict "name" $ref.secretName "key" $ref.key))) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.redaction.enabled .Values.redaction.hashKey.secretName -}}
{{- $env = append $env (dict
      "name" (include "auditnorm.hashKeyEnv" .)
      "valueFrom" (dict "secretKeyRef" (dict "name" .Values.redaction.hashKey.secretName "key" .Values.redaction.hashKey.key))) -}}
{{- end -}}
{{- $env = concat $env (.Values.env | default list) -}}
{{- if $env -}}
{{- toYaml $env -}}
{{- end -}}
{{- end -}}
