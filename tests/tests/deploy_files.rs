//! Offline checks of the deployment files: `docker-compose.yml` (rendered by
//! `docker-compose config`), the kustomize trees under `k8s/` (rendered by
//! `kubectl kustomize`), `k8s/nats/values.yaml`, the `Dockerfile` and
//! `.dockerignore`. No Docker engine and no cluster are needed, but the two CLIs
//! are: when one is missing the test fails and says to run
//! `scripts/install-deps.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The five services, with their HTTP and gRPC ports (the contract).
const SERVICES: [(&str, u16, u16); 5] = [
    ("ami-bridge", 8081, 9081),
    ("im-bridge", 8082, 9082),
    ("ws-push", 8083, 9083),
    ("chat-store", 8084, 9084),
    ("hook-runner", 8085, 9085),
];

/// Services scaled by an HPA (and so without `spec.replicas`).
const AUTOSCALED: [&str; 2] = ["ws-push", "hook-runner"];

/// Active/standby services: a fixed count of two, except in dev.
const BRIDGES: [&str; 2] = ["ami-bridge", "im-bridge"];

/// The only Secrets the manifests may reference (k8s/README.md documents them).
const KNOWN_SECRETS: [&str; 4] = [
    "switchboard-db",
    "switchboard-auth",
    "switchboard-ami",
    "switchboard-nats",
];

const NAMESPACE: &str = "switchboard";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Runs `tool args...`, fails the test if the tool is missing or exits non-zero,
/// and returns its stdout.
fn run_tool(tool: &str, args: &[&str]) -> String {
    let output = match Command::new(tool).args(args).current_dir(repo_root()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{tool}` is not installed (not found on PATH); this test needs it to check the \
             deployment files offline. Run scripts/install-deps.sh (installs docker-compose and \
             kubectl), then re-run the test."
        ),
        Err(e) => panic!("cannot run `{tool}`: {e}; run scripts/install-deps.sh"),
    };
    let stdout = String::from_utf8(output.stdout).expect("tool output is UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{tool} {}` failed with {}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
        args.join(" "),
        output.status
    );
    stdout
}

// ---------------------------------------------------------------------------
// YAML helpers
// ---------------------------------------------------------------------------

fn parse_yaml(text: &str, what: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

fn parse_multi_doc(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: a document is not valid YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `value.a.b.c` by a dotted path; `Value::Null` when any step is missing.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    path.split('.').fold(value, |v, key| v.get(key).unwrap_or(&NULL))
}

fn str_at<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).as_str()
}

fn seq_at<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path).as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// A compose list-or-map field (`environment`, `depends_on`) as a name -> value map.
fn list_or_map(value: &Value) -> BTreeMap<String, Value> {
    match value {
        Value::Mapping(map) => map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Value::String(v.to_owned())),
                None => (item.to_owned(), Value::Null),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A scalar as text, whatever YAML type it parsed to (`"1"`, `1`, `true`).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A Kubernetes memory quantity in bytes (`64Mi`, `1Gi`, `512M`, `1000`).
fn memory_bytes(quantity: &str) -> u64 {
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("bad memory quantity {quantity:?}"))
                * factor;
        }
    }
    quantity
        .parse()
        .unwrap_or_else(|_| panic!("bad memory quantity {quantity:?}"))
}

/// A Kubernetes CPU quantity in millicores (`250m`, `1`, `"2"`, `0.5`).
fn cpu_millis(value: &Value) -> u64 {
    let text = scalar_text(value).unwrap_or_else(|| panic!("cpu quantity is not a scalar: {value:?}"));
    if let Some(m) = text.strip_suffix('m') {
        return m.parse().unwrap_or_else(|_| panic!("bad cpu quantity {text:?}"));
    }
    let cores: f64 = text.parse().unwrap_or_else(|_| panic!("bad cpu quantity {text:?}"));
    (cores * 1000.0).round() as u64
}

// ---------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------

#[test]
fn docker_compose_config_is_valid_and_wires_every_service() {
    let file = repo_root().join("docker-compose.yml");
    let rendered = run_tool("docker-compose", &["-f", file.to_str().expect("UTF-8 path"), "config"]);
    let compose = parse_yaml(&rendered, "`docker-compose config` output");
    let services = at(&compose, "services")
        .as_mapping()
        .expect("`docker-compose config` output has a `services` map");

    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for expected in SERVICES.iter().map(|s| s.0).chain(["nats", "postgres"]) {
        assert!(
            names.contains(expected),
            "docker-compose.yml has no service `{expected}` (has {names:?})"
        );
    }

    // NATS: JetStream on, a health check, a data volume.
    let nats = &services[&Value::from("nats")];
    let nats_image = str_at(nats, "image").expect("nats has an image");
    let nats_version = nats_image
        .strip_prefix("nats:")
        .expect("nats uses the official `nats` image");
    let mut parts = nats_version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 10),
        "NATS must be >= 2.10 for the services, got {nats_image}"
    );
    let nats_command: Vec<&str> = seq_at(nats, "command").iter().filter_map(Value::as_str).collect();
    assert!(
        nats_command.contains(&"-js"),
        "nats must run with JetStream (-js): {nats_command:?}"
    );
    let nats_health: Vec<&str> = seq_at(nats, "healthcheck.test")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        nats_health
            .iter()
            .any(|arg| arg.contains("/healthz") && arg.contains("js-enabled-only=true")),
        "nats health check must wait for JetStream: {nats_health:?}"
    );
    assert!(
        !seq_at(nats, "volumes").is_empty(),
        "nats JetStream data must be on a volume"
    );

    // PostgreSQL: health check with pg_isready, data volume.
    let postgres = &services[&Value::from("postgres")];
    let pg_health = seq_at(postgres, "healthcheck.test")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        pg_health.contains("pg_isready"),
        "postgres health check must use pg_isready: {pg_health}"
    );
    assert!(
        !seq_at(postgres, "volumes").is_empty(),
        "postgres data must be on a volume"
    );

    for (name, http_port, grpc_port) in SERVICES {
        let service = &services[&Value::from(name)];

        assert_eq!(
            str_at(service, "image"),
            Some("switchboard:local"),
            "{name}: one image for all services"
        );
        assert!(
            !at(service, "build").is_null(),
            "{name}: must be built from the Dockerfile (`build: .`)"
        );
        let command: Vec<&str> = seq_at(service, "command").iter().filter_map(Value::as_str).collect();
        assert_eq!(
            command.first().copied(),
            Some(name),
            "{name}: command must start the `{name}` binary"
        );

        // Health check through the CLI against /readyz on the service's own port.
        let health: Vec<&str> = seq_at(service, "healthcheck.test")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(!health.is_empty(), "{name}: has no healthcheck");
        assert_eq!(
            health,
            [
                "CMD",
                "switchboard",
                "health",
                &format!("http://127.0.0.1:{http_port}/readyz")
            ],
            "{name}: healthcheck must be `switchboard health` on its /readyz"
        );

        // Starts only after NATS is healthy.
        let depends = list_or_map(at(service, "depends_on"));
        let nats_dep = depends
            .get("nats")
            .unwrap_or_else(|| panic!("{name}: does not depend on nats"));
        assert_eq!(
            str_at(nats_dep, "condition"),
            Some("service_healthy"),
            "{name}: must wait for nats to be healthy"
        );

        let env = list_or_map(at(service, "environment"));
        let env_text = |key: &str| env.get(key).and_then(scalar_text);
        assert_eq!(
            env_text("SB_NATS__URL").as_deref(),
            Some("nats://nats:4222"),
            "{name}: SB_NATS__URL must point at the nats service"
        );
        assert_eq!(
            env_text("SB_HTTP__LISTEN").as_deref(),
            Some(format!("0.0.0.0:{http_port}").as_str()),
            "{name}: must listen for HTTP on all interfaces on its port"
        );
        assert_eq!(
            env_text("SB_GRPC__LISTEN").as_deref(),
            Some(format!("0.0.0.0:{grpc_port}").as_str()),
            "{name}: must listen for gRPC on all interfaces on its port"
        );
        let format = env_text("SB_LOG__FORMAT").unwrap_or_default();
        assert!(
            format == "pretty" || format == "json",
            "{name}: SB_LOG__FORMAT must be pretty|json, got {format:?}"
        );

        // Both ports published (v1.29 renders `published`/`target` maps; v2 too).
        let published: BTreeSet<u16> = seq_at(service, "ports")
            .iter()
            .filter_map(|p| match p {
                Value::Mapping(_) => at(p, "target").as_u64().and_then(|t| u16::try_from(t).ok()),
                other => scalar_text(other)?.rsplit(':').next()?.parse().ok(),
            })
            .collect();
        assert!(
            published.contains(&http_port) && published.contains(&grpc_port),
            "{name}: must publish {http_port} and {grpc_port}, publishes {published:?}"
        );

        // Never root.
        let user = scalar_text(at(service, "user")).unwrap_or_default();
        assert!(
            user.starts_with("10001"),
            "{name}: must run as uid 10001, got user {user:?}"
        );
    }

    // chat-store: PostgreSQL, after it is healthy; JWT secret.
    let chat_store = &services[&Value::from("chat-store")];
    let depends = list_or_map(at(chat_store, "depends_on"));
    assert_eq!(
        depends.get("postgres").and_then(|d| str_at(d, "condition")),
        Some("service_healthy"),
        "chat-store must wait for postgres to be healthy"
    );
    let env = list_or_map(at(chat_store, "environment"));
    let db_url = env.get("SB_DATABASE__URL").and_then(scalar_text).unwrap_or_default();
    assert!(
        db_url.starts_with("postgres://") && db_url.contains("@postgres:5432/"),
        "chat-store SB_DATABASE__URL must point at the postgres service, got {db_url:?}"
    );
    assert!(
        env.contains_key("SB_AUTH__JWT_SECRET"),
        "chat-store needs SB_AUTH__JWT_SECRET"
    );
    assert!(
        list_or_map(at(&services[&Value::from("ws-push")], "environment")).contains_key("SB_AUTH__JWT_SECRET"),
        "ws-push needs SB_AUTH__JWT_SECRET"
    );

    // hook-runner: the example rules, read-only, where SB_RULES__DIR says.
    let hook_runner = &services[&Value::from("hook-runner")];
    let rules_dir = list_or_map(at(hook_runner, "environment"))
        .get("SB_RULES__DIR")
        .and_then(scalar_text)
        .expect("hook-runner sets SB_RULES__DIR");
    let rules_mounted_ro = seq_at(hook_runner, "volumes").iter().any(|v| match v {
        Value::String(s) => s.contains("examples/rules") && s.contains(&format!(":{rules_dir}:ro")),
        Value::Mapping(_) => {
            str_at(v, "target") == Some(rules_dir.as_str())
                && str_at(v, "source").is_some_and(|s| s.ends_with("examples/rules"))
                && at(v, "read_only").as_bool() == Some(true)
        }
        _ => false,
    });
    assert!(
        rules_mounted_ro,
        "hook-runner must mount ./examples/rules read-only at {rules_dir}"
    );

    let volumes: BTreeSet<&str> = at(&compose, "volumes")
        .as_mapping()
        .map(|m| m.keys().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for volume in ["nats-data", "postgres-data", "chat-store-data"] {
        assert!(
            volumes.contains(volume),
            "docker-compose.yml must declare volume `{volume}` (has {volumes:?})"
        );
    }
}

// ---------------------------------------------------------------------------
// Kubernetes (kustomize)
// ---------------------------------------------------------------------------

fn render_kustomize(dir: &str) -> Vec<Value> {
    let path = repo_root().join("k8s").join(dir);
    let rendered = run_tool("kubectl", &["kustomize", path.to_str().expect("UTF-8 path")]);
    let docs = parse_multi_doc(&rendered, &format!("`kubectl kustomize k8s/{dir}`"));
    assert!(!docs.is_empty(), "`kubectl kustomize k8s/{dir}` rendered nothing");
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| str_at(d, "kind") == Some(kind) && str_at(d, "metadata.name") == Some(name))
}

fn expect<'a>(docs: &'a [Value], kind: &str, name: &str, dir: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| panic!("k8s/{dir}: no {kind} `{name}`"))
}

/// Does `selector` (a `matchLabels` map) select pods with `labels`?
fn selects(selector: &Value, labels: &Value) -> bool {
    match selector.as_mapping() {
        Some(selector) if !selector.is_empty() => selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// Environment variables of a container by name (only `env`, not `envFrom`).
fn container_env(container: &Value) -> BTreeMap<&str, &Value> {
    seq_at(container, "env")
        .iter()
        .filter_map(|e| Some((str_at(e, "name")?, e)))
        .collect()
}

/// Names of the Secrets a pod spec refers to, in any way.
fn referenced_secrets(pod_spec: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for container in seq_at(pod_spec, "containers") {
        for from in seq_at(container, "envFrom") {
            names.extend(str_at(from, "secretRef.name").map(str::to_owned));
        }
        for env in seq_at(container, "env") {
            names.extend(str_at(env, "valueFrom.secretKeyRef.name").map(str::to_owned));
        }
    }
    for volume in seq_at(pod_spec, "volumes") {
        names.extend(str_at(volume, "secret.secretName").map(str::to_owned));
    }
    names
}

/// Names of the ConfigMaps a pod spec refers to.
fn referenced_config_maps(pod_spec: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for container in seq_at(pod_spec, "containers") {
        for from in seq_at(container, "envFrom") {
            names.extend(str_at(from, "configMapRef.name").map(str::to_owned));
        }
        for env in seq_at(container, "env") {
            names.extend(str_at(env, "valueFrom.configMapKeyRef.name").map(str::to_owned));
        }
    }
    for volume in seq_at(pod_spec, "volumes") {
        names.extend(str_at(volume, "configMap.name").map(str::to_owned));
    }
    names
}

/// The generated `switchboard-env` ConfigMap's data (its name carries a hash).
fn switchboard_env(docs: &[Value], dir: &str) -> BTreeMap<String, String> {
    let env = docs
        .iter()
        .find(|d| {
            str_at(d, "kind") == Some("ConfigMap")
                && str_at(d, "metadata.name").is_some_and(|n| n.starts_with("switchboard-env"))
        })
        .unwrap_or_else(|| panic!("k8s/{dir}: no switchboard-env ConfigMap"));
    list_or_map(at(env, "data"))
        .into_iter()
        .filter_map(|(k, v)| Some((k, scalar_text(&v)?)))
        .collect()
}

/// Every check that holds for the base and both overlays; returns the rendered
/// objects for the overlay-specific checks.
fn check_kustomization(dir: &str) -> Vec<Value> {
    let docs = render_kustomize(dir);

    // No committed secret values: no Secret object carrying data at all.
    for doc in &docs {
        if str_at(doc, "kind") == Some("Secret") {
            let name = str_at(doc, "metadata.name").unwrap_or("?");
            let has_data = ["data", "stringData"]
                .iter()
                .any(|key| at(doc, key).as_mapping().is_some_and(|m| !m.is_empty()));
            assert!(!has_data, "k8s/{dir}: Secret `{name}` has data; commit references only");
        }
        // Everything namespaced lands in the switchboard namespace.
        let kind = str_at(doc, "kind").unwrap_or("?");
        if kind != "Namespace" {
            assert_eq!(
                str_at(doc, "metadata.namespace"),
                Some(NAMESPACE),
                "k8s/{dir}: {kind} `{}` is not in namespace {NAMESPACE}",
                str_at(doc, "metadata.name").unwrap_or("?")
            );
        }
    }
    assert!(
        find(&docs, "Namespace", NAMESPACE).is_some(),
        "k8s/{dir}: no Namespace `{NAMESPACE}`"
    );

    let config_maps: BTreeSet<&str> = docs
        .iter()
        .filter(|d| str_at(d, "kind") == Some("ConfigMap"))
        .filter_map(|d| str_at(d, "metadata.name"))
        .collect();

    let env = switchboard_env(&docs, dir);
    assert!(
        env.get("SB_NATS__URL").is_some_and(|u| u.starts_with("nats://")),
        "k8s/{dir}: switchboard-env must set SB_NATS__URL, has {env:?}"
    );

    for (name, http_port, grpc_port) in SERVICES {
        let deployment = expect(&docs, "Deployment", name, dir);
        let pod_labels = at(deployment, "spec.template.metadata.labels");
        assert!(
            selects(at(deployment, "spec.selector.matchLabels"), pod_labels),
            "k8s/{dir}: Deployment {name}'s selector does not match its pod labels"
        );
        let pod_spec = at(deployment, "spec.template.spec");
        let containers = seq_at(pod_spec, "containers");
        assert!(!containers.is_empty(), "k8s/{dir}: Deployment {name} has no containers");

        for container in containers {
            let cname = str_at(container, "name").unwrap_or("?");
            let what = format!("k8s/{dir}: {name}/{cname}");

            assert_eq!(
                str_at(container, "readinessProbe.httpGet.path"),
                Some("/readyz"),
                "{what}: readinessProbe"
            );
            assert_eq!(
                str_at(container, "livenessProbe.httpGet.path"),
                Some("/healthz"),
                "{what}: livenessProbe"
            );
            assert!(at(container, "startupProbe").is_mapping(), "{what}: no startupProbe");

            for kind in ["limits", "requests"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !at(container, &format!("resources.{kind}.{resource}")).is_null(),
                        "{what}: resources.{kind}.{resource} is missing"
                    );
                }
            }
            for resource in ["cpu", "memory"] {
                let (request, limit) = (
                    at(container, &format!("resources.requests.{resource}")),
                    at(container, &format!("resources.limits.{resource}")),
                );
                let (request, limit) = if resource == "cpu" {
                    (cpu_millis(request), cpu_millis(limit))
                } else {
                    (
                        memory_bytes(&scalar_text(request).unwrap_or_default()),
                        memory_bytes(&scalar_text(limit).unwrap_or_default()),
                    )
                };
                assert!(request <= limit, "{what}: {resource} request is above its limit");
            }

            let sc = at(container, "securityContext");
            assert_eq!(
                at(sc, "runAsNonRoot").as_bool(),
                Some(true),
                "{what}: runAsNonRoot must be true"
            );
            assert_eq!(
                at(sc, "readOnlyRootFilesystem").as_bool(),
                Some(true),
                "{what}: readOnlyRootFilesystem"
            );
            assert_eq!(
                at(sc, "allowPrivilegeEscalation").as_bool(),
                Some(false),
                "{what}: allowPrivilegeEscalation"
            );
            assert_eq!(
                at(sc, "runAsUser").as_u64(),
                Some(10001),
                "{what}: runAsUser must be 10001"
            );
            assert!(
                seq_at(sc, "capabilities.drop")
                    .iter()
                    .any(|c| c.as_str() == Some("ALL")),
                "{what}: capabilities must drop ALL"
            );
            let seccomp =
                str_at(sc, "seccompProfile.type").or_else(|| str_at(pod_spec, "securityContext.seccompProfile.type"));
            assert_eq!(
                seccomp,
                Some("RuntimeDefault"),
                "{what}: seccompProfile must be RuntimeDefault"
            );
        }

        // The main container: the right binary, its config file mounted, its ports.
        let main = containers
            .iter()
            .find(|c| str_at(c, "name") == Some(name))
            .unwrap_or_else(|| panic!("k8s/{dir}: Deployment {name} has no container named {name}"));
        let command: Vec<&str> = seq_at(main, "command").iter().filter_map(Value::as_str).collect();
        assert_eq!(command, [name], "k8s/{dir}: {name} must run the `{name}` binary");
        let config_path = format!("/etc/switchboard/{name}.toml");
        let args: Vec<&str> = seq_at(main, "args").iter().filter_map(Value::as_str).collect();
        assert!(
            args.windows(2).any(|w| w == ["--config", config_path.as_str()]),
            "k8s/{dir}: {name} must be started with --config {config_path}, args {args:?}"
        );
        let config_mount = seq_at(main, "volumeMounts")
            .iter()
            .find(|m| str_at(m, "mountPath") == Some(config_path.as_str()))
            .unwrap_or_else(|| panic!("k8s/{dir}: {name} does not mount {config_path}"));
        let config_volume = seq_at(pod_spec, "volumes")
            .iter()
            .find(|v| str_at(v, "name") == str_at(config_mount, "name"))
            .unwrap_or_else(|| panic!("k8s/{dir}: {name}: the volume mounted at {config_path} is not declared"));
        let config_map_name = str_at(config_volume, "configMap.name")
            .unwrap_or_else(|| panic!("k8s/{dir}: {name}: {config_path} must come from a ConfigMap"));
        let config_map = expect(&docs, "ConfigMap", config_map_name, dir);
        let key = str_at(config_mount, "subPath").unwrap_or(&config_path["/etc/switchboard/".len()..]);
        let toml_text = at(config_map, "data")
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("k8s/{dir}: ConfigMap {config_map_name} has no key {key}"));
        let config: toml::Table = toml_text
            .parse()
            .unwrap_or_else(|e| panic!("k8s/{dir}: {name}'s config is not valid TOML: {e}"));
        let listen = |section: &str| {
            config
                .get(section)
                .and_then(|s| s.get("listen"))
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
        };
        assert_eq!(
            listen("http"),
            Some(format!("0.0.0.0:{http_port}")),
            "k8s/{dir}: {name} http.listen"
        );
        assert_eq!(
            listen("grpc"),
            Some(format!("0.0.0.0:{grpc_port}")),
            "k8s/{dir}: {name} grpc.listen"
        );

        let ports: BTreeMap<&str, u64> = seq_at(main, "ports")
            .iter()
            .filter_map(|p| Some((str_at(p, "name")?, at(p, "containerPort").as_u64()?)))
            .collect();
        assert_eq!(
            ports.get("http"),
            Some(&u64::from(http_port)),
            "k8s/{dir}: {name} http containerPort"
        );
        assert_eq!(
            ports.get("grpc"),
            Some(&u64::from(grpc_port)),
            "k8s/{dir}: {name} grpc containerPort"
        );
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let port = at(main, &format!("{probe}.httpGet.port"));
            let ok = port.as_str() == Some("http") || port.as_u64() == Some(u64::from(http_port));
            assert!(
                ok,
                "k8s/{dir}: {name} {probe} must probe the http port, probes {port:?}"
            );
        }

        // Read-only root: /tmp must be writable.
        assert!(
            seq_at(main, "volumeMounts")
                .iter()
                .any(|m| str_at(m, "mountPath") == Some("/tmp")),
            "k8s/{dir}: {name} has a read-only root filesystem but no writable /tmp"
        );

        // Shared settings and NATS URL reach the service.
        let env_from_cm: BTreeSet<&str> = seq_at(main, "envFrom")
            .iter()
            .filter_map(|f| str_at(f, "configMapRef.name"))
            .collect();
        assert!(
            env_from_cm.iter().any(|n| n.starts_with("switchboard-env")),
            "k8s/{dir}: {name} does not load the switchboard-env ConfigMap"
        );

        // References resolve: every ConfigMap exists (kustomize rewrote the hashed
        // names), every Secret is one of the documented ones and is not committed.
        for cm in referenced_config_maps(pod_spec) {
            assert!(
                config_maps.contains(cm.as_str()),
                "k8s/{dir}: {name} refers to missing ConfigMap `{cm}`"
            );
        }
        for secret in referenced_secrets(pod_spec) {
            assert!(
                KNOWN_SECRETS.contains(&secret.as_str()),
                "k8s/{dir}: {name} refers to undocumented Secret `{secret}` (document it in k8s/README.md)"
            );
            assert!(
                find(&docs, "Secret", &secret).is_none(),
                "k8s/{dir}: Secret `{secret}` must be created out of band, not committed"
            );
        }

        // Service: selects the pods, exposes both ports by name.
        let service = expect(&docs, "Service", name, dir);
        assert!(
            selects(at(service, "spec.selector"), pod_labels),
            "k8s/{dir}: Service {name} does not select the {name} pods"
        );
        let service_ports: BTreeMap<&str, u64> = seq_at(service, "spec.ports")
            .iter()
            .filter_map(|p| Some((str_at(p, "name")?, at(p, "port").as_u64()?)))
            .collect();
        assert_eq!(
            service_ports.get("http"),
            Some(&u64::from(http_port)),
            "k8s/{dir}: Service {name} http"
        );
        assert_eq!(
            service_ports.get("grpc"),
            Some(&u64::from(grpc_port)),
            "k8s/{dir}: Service {name} grpc"
        );

        // PDB: one per service, selecting its pods.
        let pdb = expect(&docs, "PodDisruptionBudget", name, dir);
        assert_eq!(
            str_at(pdb, "apiVersion"),
            Some("policy/v1"),
            "k8s/{dir}: PDB {name} apiVersion"
        );
        assert!(
            selects(at(pdb, "spec.selector.matchLabels"), pod_labels),
            "k8s/{dir}: PDB {name} does not select the {name} pods"
        );
        assert!(
            !at(pdb, "spec.maxUnavailable").is_null() || !at(pdb, "spec.minAvailable").is_null(),
            "k8s/{dir}: PDB {name} sets neither maxUnavailable nor minAvailable"
        );

        // HPA for the autoscaled services, and then no fixed replica count.
        if AUTOSCALED.contains(&name) {
            let hpa = expect(&docs, "HorizontalPodAutoscaler", name, dir);
            assert_eq!(
                str_at(hpa, "apiVersion"),
                Some("autoscaling/v2"),
                "k8s/{dir}: HPA {name} apiVersion"
            );
            assert_eq!(
                str_at(hpa, "spec.scaleTargetRef.kind"),
                Some("Deployment"),
                "k8s/{dir}: HPA {name} target"
            );
            assert_eq!(
                str_at(hpa, "spec.scaleTargetRef.name"),
                Some(name),
                "k8s/{dir}: HPA {name} target"
            );
            let (min, max) = (
                at(hpa, "spec.minReplicas").as_u64(),
                at(hpa, "spec.maxReplicas").as_u64(),
            );
            assert!(
                matches!((min, max), (Some(min), Some(max)) if min >= 1 && min <= max),
                "k8s/{dir}: HPA {name} has a bad range {min:?}..{max:?}"
            );
            assert!(
                at(deployment, "spec.replicas").is_null(),
                "k8s/{dir}: Deployment {name} is autoscaled and must not set spec.replicas"
            );
        } else {
            assert!(
                find(&docs, "HorizontalPodAutoscaler", name).is_none(),
                "k8s/{dir}: {name} is not meant to be autoscaled"
            );
        }
    }

    // Service-specific wiring.
    let main_container = |name: &str| -> &Value {
        seq_at(expect(&docs, "Deployment", name, dir), "spec.template.spec.containers")
            .iter()
            .find(|c| str_at(c, "name") == Some(name))
            .expect("checked above")
    };
    let secret_key_ref = |name: &str, var: &str| -> (Option<String>, Option<String>) {
        let container = main_container(name);
        let env = container_env(container);
        let var = env.get(var).copied().unwrap_or(&Value::Null);
        (
            str_at(var, "valueFrom.secretKeyRef.name").map(str::to_owned),
            str_at(var, "valueFrom.secretKeyRef.key").map(str::to_owned),
        )
    };
    assert_eq!(
        secret_key_ref("chat-store", "SB_DATABASE__URL"),
        (Some("switchboard-db".into()), Some("url".into())),
        "k8s/{dir}: chat-store SB_DATABASE__URL must come from Secret switchboard-db key url"
    );
    for name in ["ws-push", "chat-store"] {
        assert_eq!(
            secret_key_ref(name, "SB_AUTH__JWT_SECRET"),
            (Some("switchboard-auth".into()), Some("jwt-secret".into())),
            "k8s/{dir}: {name} SB_AUTH__JWT_SECRET must come from Secret switchboard-auth key jwt-secret"
        );
    }
    let ami_secret_optional = seq_at(main_container("ami-bridge"), "envFrom").iter().any(|f| {
        str_at(f, "secretRef.name") == Some("switchboard-ami") && at(f, "secretRef.optional").as_bool() == Some(true)
    });
    assert!(
        ami_secret_optional,
        "k8s/{dir}: ami-bridge must load Secret switchboard-ami with optional: true"
    );

    let hook_runner = main_container("hook-runner");
    let rules_dir = container_env(hook_runner)
        .get("SB_RULES__DIR")
        .and_then(|v| str_at(v, "value"))
        .unwrap_or_else(|| panic!("k8s/{dir}: hook-runner must set SB_RULES__DIR"))
        .to_owned();
    assert!(
        seq_at(hook_runner, "volumeMounts")
            .iter()
            .any(|m| str_at(m, "mountPath") == Some(rules_dir.as_str())),
        "k8s/{dir}: hook-runner must mount its rules at {rules_dir}"
    );

    let chat_store_mounts_data = seq_at(main_container("chat-store"), "volumeMounts")
        .iter()
        .any(|m| str_at(m, "mountPath") == Some("/var/lib/switchboard"));
    assert!(
        chat_store_mounts_data,
        "k8s/{dir}: chat-store needs a writable /var/lib/switchboard"
    );

    docs
}

fn image_of(docs: &[Value], name: &str) -> String {
    let deployment = find(docs, "Deployment", name).expect("checked");
    seq_at(deployment, "spec.template.spec.containers")
        .iter()
        .find_map(|c| str_at(c, "image"))
        .expect("container has an image")
        .to_owned()
}

fn replicas_of(docs: &[Value], name: &str) -> Option<u64> {
    at(find(docs, "Deployment", name).expect("checked"), "spec.replicas").as_u64()
}

fn memory_limit_of(docs: &[Value], name: &str) -> u64 {
    let deployment = find(docs, "Deployment", name).expect("checked");
    let container = &seq_at(deployment, "spec.template.spec.containers")[0];
    memory_bytes(&scalar_text(at(container, "resources.limits.memory")).expect("checked"))
}

#[test]
fn k8s_base_is_complete() {
    let docs = check_kustomization("base");
    for name in BRIDGES {
        assert_eq!(
            replicas_of(&docs, name),
            Some(2),
            "k8s/base: {name} runs active + standby"
        );
    }
}

#[test]
fn k8s_dev_overlay_is_complete_and_small() {
    let docs = check_kustomization("overlays/dev");
    for (name, ..) in SERVICES {
        assert!(
            image_of(&docs, name).ends_with(":dev"),
            "k8s/overlays/dev: {name} must use the `dev` tag"
        );
        if AUTOSCALED.contains(&name) {
            let hpa = find(&docs, "HorizontalPodAutoscaler", name).expect("checked");
            assert_eq!(
                at(hpa, "spec.minReplicas").as_u64(),
                Some(1),
                "k8s/overlays/dev: HPA {name} minReplicas"
            );
        } else {
            assert_eq!(
                replicas_of(&docs, name),
                Some(1),
                "k8s/overlays/dev: {name} must run one replica"
            );
        }
    }
    let env = switchboard_env(&docs, "overlays/dev");
    assert_eq!(
        env.get("SB_LOG__FORMAT").map(String::as_str),
        Some("pretty"),
        "k8s/overlays/dev: log format"
    );
}

#[test]
fn k8s_prod_overlay_is_complete_pinned_and_spread() {
    let docs = check_kustomization("overlays/prod");
    let dev = render_kustomize("overlays/dev");
    for (name, ..) in SERVICES {
        let image = image_of(&docs, name);
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            image.contains("@sha256:") || (!tag.is_empty() && !tag.contains('/') && !["latest", "dev"].contains(&tag)),
            "k8s/overlays/prod: {name} image must be pinned (a release tag or digest), got {image}"
        );
        assert!(
            memory_limit_of(&docs, name) > memory_limit_of(&dev, name),
            "k8s/overlays/prod: {name} must get a bigger memory limit than dev"
        );
    }
    for name in BRIDGES {
        assert_eq!(
            replicas_of(&docs, name),
            Some(2),
            "k8s/overlays/prod: {name} runs active + standby"
        );
    }
    let chat_store = replicas_of(&docs, "chat-store").unwrap_or(0);
    assert!(
        chat_store >= 2,
        "k8s/overlays/prod: chat-store needs at least 2 replicas, has {chat_store}"
    );
    for name in AUTOSCALED {
        let hpa = find(&docs, "HorizontalPodAutoscaler", name).expect("checked");
        let min = at(hpa, "spec.minReplicas").as_u64().unwrap_or(0);
        assert!(
            min >= 2,
            "k8s/overlays/prod: HPA {name} minReplicas must be >= 2, is {min}"
        );
    }

    let ws_push = at(
        find(&docs, "Deployment", "ws-push").expect("checked"),
        "spec.template.spec",
    );
    let spread = seq_at(ws_push, "topologySpreadConstraints");
    let anti_affinity = at(ws_push, "affinity.podAntiAffinity");
    assert!(
        !spread.is_empty() || anti_affinity.is_mapping(),
        "k8s/overlays/prod: ws-push must be spread (topologySpreadConstraints or podAntiAffinity)"
    );
    for constraint in spread {
        let selected = at(constraint, "labelSelector.matchLabels")
            .get("app.kubernetes.io/name")
            .and_then(Value::as_str);
        assert_eq!(
            selected,
            Some("ws-push"),
            "k8s/overlays/prod: ws-push spread constraint must select ws-push pods"
        );
    }

    let env = switchboard_env(&docs, "overlays/prod");
    assert_eq!(
        env.get("SB_LOG__FORMAT").map(String::as_str),
        Some("json"),
        "k8s/overlays/prod: log format"
    );
}

// ---------------------------------------------------------------------------
// NATS Helm values
// ---------------------------------------------------------------------------

#[test]
fn nats_helm_values_enable_jetstream_on_three_nodes() {
    let path = repo_root().join("k8s/nats/values.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let values = parse_yaml(&text, "k8s/nats/values.yaml");

    assert_eq!(
        at(&values, "config.jetstream.enabled").as_bool(),
        Some(true),
        "JetStream must be enabled"
    );
    assert_eq!(
        at(&values, "config.cluster.enabled").as_bool(),
        Some(true),
        "clustering must be enabled"
    );
    assert_eq!(
        at(&values, "config.cluster.replicas").as_u64(),
        Some(3),
        "the NATS cluster must have 3 nodes"
    );
    assert_eq!(
        at(&values, "config.jetstream.fileStore.pvc.enabled").as_bool(),
        Some(true),
        "JetStream must store on a PVC"
    );
    assert!(
        str_at(&values, "config.jetstream.fileStore.pvc.size").is_some_and(|s| memory_bytes(s) > 0),
        "JetStream PVC needs a size"
    );
    let tag = str_at(&values, "container.image.tag").unwrap_or("");
    let mut parts = tag
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(version >= (2, 10), "NATS image tag must be >= 2.10, got {tag:?}");
    for resource in ["requests.cpu", "requests.memory", "limits.cpu", "limits.memory"] {
        assert!(
            !at(&values, &format!("container.merge.resources.{resource}")).is_null(),
            "NATS container resources.{resource} is missing"
        );
    }
}

// ---------------------------------------------------------------------------
// Dockerfile and .dockerignore (text checks; there is no Docker engine here)
// ---------------------------------------------------------------------------

#[test]
fn dockerfile_builds_every_binary_into_a_non_root_slim_image() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile exists");
    let instructions: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let froms: Vec<&String> = instructions.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "Dockerfile must be multi-stage, has {froms:?}");
    assert!(
        froms[0].contains("rust:"),
        "the build stage must use the rust image: {}",
        froms[0]
    );
    let last = froms.last().expect("non-empty");
    assert!(
        last.contains("debian:") && last.contains("-slim"),
        "the final stage must be debian slim: {last}"
    );

    let build = instructions
        .iter()
        .find(|l| l.contains("cargo build"))
        .expect("Dockerfile runs cargo build");
    for flag in ["--release", "--locked", "--workspace", "--bins", "--mount=type=cache"] {
        assert!(build.contains(flag), "the cargo build step must use {flag}: {build}");
    }
    for binary in [
        "ami-bridge",
        "im-bridge",
        "ws-push",
        "chat-store",
        "hook-runner",
        "switchboard",
    ] {
        assert!(
            build.contains(binary),
            "the build step must collect the `{binary}` binary"
        );
    }

    // Runtime stage: after the last FROM.
    let last_from = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("has FROM");
    let runtime = &instructions[last_from..];
    assert!(
        runtime.iter().any(|l| l.contains("ca-certificates")),
        "runtime image needs ca-certificates"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.contains("useradd") && l.contains("10001") && l.contains("switchboard")),
        "runtime image must create user switchboard with uid 10001"
    );
    assert!(
        runtime.iter().any(|l| l.starts_with("USER 10001")),
        "runtime image must switch to USER 10001"
    );
    assert!(
        runtime.iter().any(|l| l == "WORKDIR /var/lib/switchboard"),
        "runtime WORKDIR must be /var/lib/switchboard"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("COPY --from=") && l.contains("/usr/local/bin")),
        "the binaries must be copied to /usr/local/bin"
    );
    assert!(
        !runtime.iter().any(|l| l.starts_with("ENTRYPOINT")),
        "no ENTRYPOINT: compose and Kubernetes choose the binary with `command`"
    );

    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore exists");
    let patterns: BTreeSet<&str> = ignore.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for pattern in ["target/", ".git/", "node_modules/", "artifacts/"] {
        assert!(patterns.contains(pattern), ".dockerignore must exclude {pattern}");
    }
}
