"""Writes helm/weir/values.schema.json, the JSON schema helm checks values against.

The schema is written here in Python because it repeats itself (every component's pod settings,
the Kubernetes types) and must refuse unknown keys everywhere: `obj()` always sets
`additionalProperties: false`. The `*_config` objects mirror the binaries' own config keys
(config/src/gateway.rs, control_plane.rs, tail_router.rs) less the keys the chart sets; change
them together. integration-tests/test_helm.py checks that the committed JSON is what this script
writes, and that every config key the schema admits is accepted by the binaries.

    python3 helm/schema/values_schema.py helm/weir/values.schema.json
"""

import json
import sys


def obj(props, required=None, desc=None, **kw):
    """An object with these properties and no others."""
    o = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        o["required"] = required
    if desc:
        o["description"] = desc
    o.update(kw)
    return o


def map_of(v, desc=None):
    """An object with any keys, each value matching `v` (labels, annotations, properties)."""
    o = {"type": "object", "additionalProperties": v}
    if desc:
        o["description"] = desc
    return o


def s(t, desc=None, **kw):
    """A value of JSON type `t`."""
    o = {"type": t}
    if desc:
        o["description"] = desc
    o.update(kw)
    return o


STR = s("string")
BOOL = s("boolean")
INT = s("integer")


def ref(name):
    """A reference to a shared definition."""
    return {"$ref": f"#/definitions/{name}"}


def enum(*vals, desc=None):
    """One of these strings."""
    o = {"type": "string", "enum": list(vals)}
    if desc:
        o["description"] = desc
    return o


def arr(items, **kw):
    """An array of `items`."""
    o = {"type": "array", "items": items}
    o.update(kw)
    return o


defs = {
    "duration": s(
        "string",
        "A duration with a unit: 500ms, 10s, 1m 30s.",
        pattern=r"^\s*([0-9]+(\.[0-9]+)?\s*[a-zA-Zµ]+\s*)+$",
    ),
    "byteSize": {
        "description": "Bytes: an integer, or a number with a unit (KiB, MiB, GiB, KB, MB, GB).",
        "oneOf": [
            s("integer", minimum=0),
            s("string", pattern=r"^\s*[0-9]+\s*([bB]|[kKmMgG][iI]?[bB]?)?\s*$"),
        ],
    },
    "port": s("integer", minimum=1, maximum=65535),
    "quantity": {
        "type": ["string", "number"],
        "description": "A Kubernetes quantity: 500m, 1Gi, 2.",
    },
    "intOrPercent": {"type": ["integer", "string"], "pattern": r"^([0-9]+%?)?$"},
    "stringMap": map_of(STR),
    "resources": obj(
        {"requests": map_of(ref("quantity")), "limits": map_of(ref("quantity"))},
        desc="Container resource requests and limits.",
    ),
    "tolerations": arr(
        obj(
            {
                "key": STR,
                "operator": enum("Exists", "Equal"),
                "value": STR,
                "effect": enum("NoSchedule", "PreferNoSchedule", "NoExecute", ""),
                "tolerationSeconds": INT,
            }
        )
    ),
    "affinity": obj(
        {"nodeAffinity": s("object"), "podAffinity": s("object"), "podAntiAffinity": s("object")}
    ),
    "topologySpreadConstraints": arr(
        obj(
            {
                "maxSkew": s("integer", minimum=1),
                "topologyKey": STR,
                "whenUnsatisfiable": enum("DoNotSchedule", "ScheduleAnyway"),
                "labelSelector": s("object"),
                "minDomains": s("integer", minimum=1),
                "nodeAffinityPolicy": enum("Honor", "Ignore"),
                "nodeTaintsPolicy": enum("Honor", "Ignore"),
                "matchLabelKeys": arr(STR),
            },
            required=["maxSkew", "topologyKey", "whenUnsatisfiable"],
        )
    ),
    "env": arr(
        obj({"name": STR, "value": STR, "valueFrom": s("object")}, required=["name"]),
        description="Extra environment variables, as Kubernetes takes them.",
    ),
    "image": obj({"repository": s("string", minLength=1), "tag": STR}, required=["repository"]),
    # Kubernetes objects passed through as they are (containers, volumes, probes, rules):
    # kubernetes-validate checks them in the rendered manifests.
    "k8sList": arr(s("object")),
    "probe": s("object", "A probe, as Kubernetes takes it."),
    "gatewayPort": obj(
        {
            "enabled": BOOL,
            "containerPort": ref("port"),
            "servicePort": ref("port"),
            "hostPort": ref("port"),
            "nodePort": s("integer", minimum=1, maximum=65535),
            "protocol": enum("TCP"),
            "appProtocol": STR,
        },
        desc="A port as the opentelemetry-collector chart spells it.",
    ),
    "ingressHosts": arr(
        obj(
            {
                "host": s("string", minLength=1),
                "paths": arr(
                    obj(
                        {
                            "path": STR,
                            "pathType": enum("Prefix", "Exact", "ImplementationSpecific"),
                            "port": ref("port"),
                        }
                    ),
                    minItems=1,
                ),
            },
            required=["host", "paths"],
        )
    ),
    "monitor": obj(
        {
            "enabled": BOOL,
            "interval": ref("duration"),
            "scrapeTimeout": ref("duration"),
            "extraLabels": map_of(STR),
            "relabelings": arr(s("object")),
            "metricRelabelings": arr(s("object")),
        }
    ),
    "seccompProfile": obj(
        {"type": enum("RuntimeDefault", "Localhost", "Unconfined"), "localhostProfile": STR},
        required=["type"],
    ),
    "podSecurityContext": obj(
        {
            "runAsNonRoot": BOOL,
            "runAsUser": s("integer", minimum=0),
            "runAsGroup": s("integer", minimum=0),
            "fsGroup": s("integer", minimum=0),
            "fsGroupChangePolicy": enum("OnRootMismatch", "Always"),
            "supplementalGroups": arr(s("integer", minimum=0)),
            "seccompProfile": ref("seccompProfile"),
            "seLinuxOptions": s("object"),
            "sysctls": arr(obj({"name": STR, "value": STR}, required=["name", "value"])),
        }
    ),
    "securityContext": obj(
        {
            "runAsNonRoot": BOOL,
            "runAsUser": s("integer", minimum=0),
            "runAsGroup": s("integer", minimum=0),
            "allowPrivilegeEscalation": BOOL,
            "readOnlyRootFilesystem": BOOL,
            "privileged": BOOL,
            "capabilities": obj({"add": arr(STR), "drop": arr(STR)}),
            "seccompProfile": ref("seccompProfile"),
            "seLinuxOptions": s("object"),
            "appArmorProfile": obj(
                {"type": enum("RuntimeDefault", "Localhost", "Unconfined"), "localhostProfile": STR}
            ),
        }
    ),
    "tenant": s(
        "string", "A tenant name: 1-128 of a-z A-Z 0-9 . _ -", pattern=r"^[A-Za-z0-9._-]{1,128}$"
    ),
    "serviceType": enum("ClusterIP", "NodePort", "LoadBalancer"),
    "logConfig": obj(
        {
            "level": s(
                "string",
                "A tracing filter: error, warn, info, debug, trace, or per-module directives.",
                minLength=1,
            ),
            "format": enum("text", "json"),
        }
    ),
}


def ref_props(name):
    """The properties of a shared object definition, to extend it with more."""
    return defs[name]["properties"]


def pod_keys():
    """Keys every component's pod takes."""
    return {
        "resources": ref("resources"),
        "podAnnotations": ref("stringMap"),
        "podLabels": ref("stringMap"),
        "nodeSelector": ref("stringMap"),
        "tolerations": ref("tolerations"),
        "affinity": ref("affinity"),
        "topologySpreadConstraints": ref("topologySpreadConstraints"),
        "priorityClassName": STR,
        "extraEnvs": ref("env"),
    }


listener_keepalive = obj(
    {
        "server_parameters": obj(
            {
                "max_connection_age": ref("duration"),
                "max_connection_age_grace": ref("duration"),
                "time": ref("duration"),
                "timeout": ref("duration"),
            }
        )
    },
    desc="The Collector's keepalive.server_parameters: connection age and HTTP/2 pings.",
)

listener_limits = {
    "max_connections": s("integer", minimum=1),
    "max_concurrent_streams": s("integer", minimum=1),
    "idle_timeout": ref("duration"),
    "header_read_timeout": ref("duration"),
    "keepalive": listener_keepalive,
}

listener_opts = obj(
    listener_limits,
    desc="Listener limits (the chart sets enabled and endpoint).",
)

http_listener_opts = obj(
    {
        **listener_limits,
        "cors": obj(
            {
                "allowed_origins": s("array", items=STR, minItems=1),
                "allowed_headers": s("array", items=STR),
                "max_age": s("integer", minimum=0),
            },
            required=["allowed_origins"],
            desc="CORS for browser SDKs, as the Collector's otlp receiver.",
        ),
    },
    desc="Listener limits and CORS (the chart sets enabled and endpoint).",
)

signal_encoding = obj(
    {"encoding": enum("otlp_proto", "otlp_json")},
    desc="The record encoding (the topic comes from kafka.topics).",
)

gateway_config = obj(
    {
        "receivers": obj({"grpc": listener_opts, "http": http_listener_opts}),
        "limits": obj(
            {
                "max_message_size": ref("byteSize"),
                "max_in_flight_bytes": ref("byteSize"),
                "export_timeout": ref("duration"),
                "retry_after": ref("duration"),
                "max_span_attributes": s("integer", minimum=1),
                "max_attribute_value_size": ref("byteSize"),
                "attribute_limit_action": enum("truncate", "reject"),
            }
        ),
        "kafka": obj(
            {
                "client_id": s("string", minLength=1),
                "traces": signal_encoding,
                "metrics": signal_encoding,
                "logs": signal_encoding,
                "max_message_size": ref("byteSize"),
                "acks": enum(
                    "all", "-1", "1", "0", desc="Producer acks, as a string: all, 1 or 0."
                ),
                "compression": enum("none", "gzip", "snappy", "lz4", "zstd"),
                "linger": ref("duration"),
                "max_in_flight": s("integer", minimum=1, maximum=1000000),
                "producers": s("integer", minimum=1, maximum=16),
                "properties": map_of(
                    {"type": ["string", "number", "boolean"]}, "Raw librdkafka producer properties."
                ),
                "include_metadata_keys": arr(STR),
            }
        ),
        "control_plane": obj(
            {
                "connect_timeout": ref("duration"),
                "reconnect": obj({"initial": ref("duration"), "max": ref("duration")}),
            },
            desc="Connection settings; the chart sets endpoint, token_file, state_dir and labels.",
        ),
        "spool": obj(
            {
                "enabled": BOOL,
                "max_bytes": ref("byteSize"),
                "segment_bytes": ref("byteSize"),
                "fsync": enum("always", "interval"),
                "fsync_interval": ref("duration"),
                "ack_deadline": ref("duration"),
                "replay_bytes_per_second": ref("byteSize"),
                "drain_timeout": ref("duration"),
            },
            desc="The spool (docs/spool.md); the chart sets directory (gateway.spool mounts it).",
        ),
        "tail": obj(
            {
                # The decision records' signing key (docs/tail-sampling.md): never in a
                # ConfigMap, a mounted file or an env variable (extraEnvs from a Secret).
                "signing_key_file": s("string", minLength=1),
                "signing_key_env": s("string", minLength=1),
            },
            **{"not": {"required": ["signing_key_file", "signing_key_env"]}},
        ),
        "shutdown_timeout": ref("duration"),
        "log": ref("logConfig"),
    },
    desc="The gateway's bootstrap config in its own keys (docs/configuration.md), less the keys the chart sets.",
)

policy = obj(
    {
        "version": s("integer", minimum=1),
        "sampling": s("object"),
        "routing": s("object"),
        "tail": s("object"),
    },
    desc="A policy document (docs/policy.md); its sections are checked by the gateway itself.",
)

gateway = obj(
    {
        "enabled": BOOL,
        "image": ref("image"),
        "replicas": s("integer", minimum=1),
        "autoscaling": obj(
            {
                "enabled": BOOL,
                "minReplicas": s("integer", minimum=1),
                "maxReplicas": s("integer", minimum=1),
                "targetCPUUtilizationPercentage": s("integer", minimum=1, maximum=1000),
                "targetMemoryUtilizationPercentage": s("integer", minimum=0, maximum=1000),
                "behavior": obj({"scaleUp": s("object"), "scaleDown": s("object")}),
            }
        ),
        "podDisruptionBudget": obj(
            {
                "enabled": BOOL,
                "maxUnavailable": ref("intOrPercent"),
                "minAvailable": ref("intOrPercent"),
            }
        ),
        "ports": obj(
            {
                "otlp": ref("gatewayPort"),
                "otlp-http": ref("gatewayPort"),
                "metrics": ref("gatewayPort"),
            },
            desc="The opentelemetry-collector chart's ports map, for the gateway's listeners.",
        ),
        "service": obj(
            {
                "type": ref("serviceType"),
                "annotations": ref("stringMap"),
                "externalTrafficPolicy": enum("", "Cluster", "Local"),
                "clusterIP": s("string", pattern=r"^(|None|[0-9a-fA-F.:]+)$"),
                "loadBalancerIP": STR,
                "loadBalancerSourceRanges": arr(s("string", pattern=r"^[0-9a-fA-F.:]+/[0-9]+$")),
                "internalTrafficPolicy": enum("", "Cluster", "Local"),
            }
        ),
        "ingress": obj(
            {
                "enabled": BOOL,
                "annotations": ref("stringMap"),
                "ingressClassName": STR,
                "hosts": ref("ingressHosts"),
                "tls": arr(s("object")),
                "additionalIngresses": arr(
                    obj(
                        {
                            "name": s("string", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
                            "annotations": ref("stringMap"),
                            "ingressClassName": STR,
                            "hosts": ref("ingressHosts"),
                            "tls": arr(s("object")),
                        },
                        required=["name", "hosts"],
                    )
                ),
            }
        ),
        "httproute": obj(
            {
                "enabled": BOOL,
                "apiVersion": STR,
                "annotations": ref("stringMap"),
                "parentRefs": arr(s("object")),
                "hostnames": arr(STR),
                "rules": arr(s("object")),
            }
        ),
        "configMap": obj({"create": BOOL, "existingName": STR}),
        "networkPolicy": obj(
            {
                "enabled": BOOL,
                "annotations": ref("stringMap"),
                "allowIngressFrom": arr(s("object")),
                "extraIngressRules": arr(s("object")),
                "egressRules": arr(s("object")),
            }
        ),
        "extraEnvsFrom": ref("k8sList"),
        "extraVolumes": ref("k8sList"),
        "extraVolumeMounts": ref("k8sList"),
        "initContainers": ref("k8sList"),
        "extraContainers": ref("k8sList"),
        "lifecycleHooks": s("object", "The container's lifecycle (postStart, preStop)."),
        "readinessProbe": ref("probe"),
        "livenessProbe": ref("probe"),
        "startupProbe": ref("probe"),
        "controlPlane": obj(
            {
                "endpoint": s("string", pattern=r"^(https?://[^/\s]+/?)?$"),
                "existingSecret": STR,
                "existingSecretKey": s("string", minLength=1),
                "labels": ref("stringMap"),
            }
        ),
        "tls": obj({"existingSecret": STR, "clientCaKey": STR, "minVersion": enum("1.2", "1.3")}),
        "auth": obj(
            {
                "apiKeyHeader": s("string", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]*$"),
                "tokens": arr(
                    {
                        "oneOf": [
                            obj(
                                {
                                    "tenant": ref("tenant"),
                                    "existingSecret": s("string", minLength=1),
                                    "key": s("string", minLength=1),
                                },
                                required=["tenant", "existingSecret", "key"],
                            ),
                            obj(
                                {
                                    "tenant": ref("tenant"),
                                    "sha256": s("string", pattern=r"^[0-9a-fA-F]{64}$"),
                                },
                                required=["tenant", "sha256"],
                            ),
                        ]
                    }
                ),
            }
        ),
        "config": gateway_config,
        "policy": {"oneOf": [obj({}, maxProperties=0), dict(policy, required=["version"])]},
        "spool": obj(
            {
                "mode": enum("emptyDir", "statefulSet"),
                "sizeLimit": ref("quantity"),
                "persistence": obj(
                    {
                        "size": ref("quantity"),
                        "storageClassName": STR,
                        "accessModes": arr(
                            enum("ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"), minItems=1
                        ),
                    }
                ),
            }
        ),
        "preStopSleepSeconds": s("integer", minimum=0, maximum=300),
        "terminationGracePeriodSeconds": s("integer", minimum=0),
        **pod_keys(),
    }
)

kafka = obj(
    {
        "brokers": arr(
            s("string", pattern=r"^[^\s:]+:[0-9]{1,5}$"),
            minItems=1,
            description="Bootstrap brokers, host:port.",
        ),
        "security": obj(
            {
                "protocol": enum("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
                "sasl": obj(
                    {
                        "mechanism": enum("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                        "username": STR,
                        "password": STR,
                        "existingSecret": STR,
                        "existingSecretKey": s("string", minLength=1),
                    }
                ),
                "tls": obj(
                    {
                        "ca": STR,
                        "cert": STR,
                        "key": STR,
                        "existingSecret": STR,
                        "caKey": STR,
                        "certKey": STR,
                        "keyKey": STR,
                    }
                ),
            }
        ),
        "topics": obj(
            {
                k: s("string", pattern=r"^[a-zA-Z0-9._-]{1,249}$")
                for k in ["traces", "metrics", "logs", "cold", "decisions"]
            }
        ),
    }
)

control_plane_config = obj(
    {
        "storage": obj({"poll_interval": ref("duration")}),
        "gateways": obj({"ttl": ref("duration")}),
        "shutdown_timeout": ref("duration"),
        "log": ref("logConfig"),
    },
    desc="The control plane's config in its own keys, less the keys the chart sets.",
)

tail_router_config = obj(
    {
        "delay": ref("duration"),
        "window_retention": ref("duration"),
        "batch_size": s("integer", minimum=1, maximum=1000000),
        "produce_timeout": ref("duration"),
        "kafka": obj(
            {
                "client_id": s("string", minLength=1),
                "group_id": s("string", minLength=1),
                "max_message_size": ref("byteSize"),
                "compression": enum("none", "gzip", "snappy", "lz4", "zstd"),
                "linger": ref("duration"),
                "consumer_properties": map_of({"type": ["string", "number", "boolean"]}),
                "producer_properties": map_of({"type": ["string", "number", "boolean"]}),
            }
        ),
        "shutdown_timeout": ref("duration"),
        "log": ref("logConfig"),
        "max_timestamp_lead": ref("duration"),
        "cold": obj({"dead_letter_topic": s("string", pattern=r"^[a-zA-Z0-9._-]{1,249}$")}),
        "decisions": obj(
            {
                "max_window_length": ref("duration"),
                "max_window_lead": ref("duration"),
                "max_filters_per_window": s("integer", minimum=1, maximum=64),
                "max_hashes": s("integer", minimum=1, maximum=64),
                "max_filter_bytes": ref("byteSize"),
                "max_total_bytes": ref("byteSize"),
                "max_expected_items": s("integer", minimum=1),
                # The key itself never goes into a ConfigMap: a mounted file or an env
                # variable (extraEnv from a Secret).
                "signing_key_file": s("string", minLength=1),
                "signing_key_env": s("string", minLength=1),
            },
            # The tail router takes one source of the key.
            **{"not": {"required": ["signing_key_env", "signing_key_file"]}},
        ),
    },
    desc="The tail router's config in its own keys, less the keys the chart sets.",
)

control_plane = obj(
    {
        "enabled": BOOL,
        "image": ref("image"),
        "storage": obj(
            {
                "backend": enum("sqlite", "postgresql"),
                "sqlite": obj(
                    {
                        "size": ref("quantity"),
                        "storageClassName": STR,
                        "accessModes": arr(
                            enum("ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"), minItems=1
                        ),
                    }
                ),
                "postgresql": obj(
                    {
                        "dsn": s("string", pattern=r"^((postgres|postgresql)://.*)?$"),
                        "existingSecret": STR,
                        "existingSecretKey": s("string", minLength=1),
                        "maxConnections": s("integer", minimum=1),
                    }
                ),
            }
        ),
        "replicas": s("integer", minimum=1),
        "auth": obj(
            {
                "existingSecret": STR,
                "adminToken": STR,
                "viewerToken": STR,
                "gatewayToken": STR,
                "extraTokens": arr(
                    obj(
                        {
                            "name": s("string", minLength=1),
                            "role": enum("admin", "viewer", "gateway"),
                            "sha256": s("string", pattern=r"^[0-9a-fA-F]{64}$"),
                            "instances": arr(s("string", minLength=1), minItems=1),
                        },
                        required=["name", "role", "sha256"],
                    )
                ),
            }
        ),
        "tls": obj({"existingSecret": STR, "caKey": STR}),
        "ports": obj({"api": ref("port"), "watch": ref("port")}),
        "api": obj(
            {
                "max_connections": s("integer", minimum=1),
                "max_concurrent_streams": s("integer", minimum=1),
                "idle_timeout": ref("duration"),
                "header_read_timeout": ref("duration"),
            },
            desc="Limits of the REST listener (the api.* keys of config/control-plane.yaml).",
        ),
        "service": obj({"type": ref("serviceType"), "annotations": ref("stringMap")}),
        "podDisruptionBudget": obj({"enabled": BOOL, "maxUnavailable": ref("intOrPercent")}),
        "config": control_plane_config,
        "terminationGracePeriodSeconds": s("integer", minimum=0),
        **pod_keys(),
    }
)

tail_router = obj(
    {
        "enabled": BOOL,
        "image": ref("image"),
        "replicas": s("integer", minimum=1),
        "ports": obj({"admin": ref("port")}),
        "service": obj({"annotations": ref("stringMap")}),
        "podDisruptionBudget": obj({"enabled": BOOL, "maxUnavailable": ref("intOrPercent")}),
        "config": tail_router_config,
        "terminationGracePeriodSeconds": s("integer", minimum=0),
        **pod_keys(),
    }
)
root = obj(
    {
        "nameOverride": STR,
        "fullnameOverride": STR,
        "commonLabels": ref("stringMap"),
        "image": obj(
            {"registry": STR, "tag": STR, "pullPolicy": enum("IfNotPresent", "Always", "Never")}
        ),
        "imagePullSecrets": arr(s("string", minLength=1)),
        "serviceAccount": obj({"create": BOOL, "name": STR, "annotations": ref("stringMap")}),
        "podSecurityContext": ref("podSecurityContext"),
        "securityContext": ref("securityContext"),
        "kafka": kafka,
        "gateway": gateway,
        "controlPlane": control_plane,
        "tailRouter": tail_router,
        # Helm adds `global` to every chart's values (empty without a parent chart).
        "global": s("object", "Set by Helm for parent charts; unused by this chart."),
        "serviceMonitor": obj(
            {
                **ref_props("monitor"),
                "sampleLimit": s("integer", minimum=0),
            }
        ),
        "podMonitor": ref("monitor"),
        "prometheusRule": obj(
            {
                "enabled": BOOL,
                "groups": arr(s("object")),
                "defaultRules": obj(
                    {
                        "enabled": BOOL,
                        "additionalRuleLabels": ref("stringMap"),
                        "additionalRuleAnnotations": ref("stringMap"),
                        "routerLagRecords": s("integer", minimum=1),
                    }
                ),
                "extraLabels": ref("stringMap"),
            }
        ),
        "grafanaDashboard": obj(
            {
                "enabled": BOOL,
                "labels": ref("stringMap"),
                "annotations": ref("stringMap"),
                "namespace": STR,
            }
        ),
    }
)


def main(out: str):
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the weir Helm chart",
        **root,
        "definitions": defs,
    }
    with open(out, "w") as f:
        json.dump(schema, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.json")
    main(sys.argv[1])
