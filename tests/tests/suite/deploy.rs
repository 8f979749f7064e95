//! The shipped monitoring under SpinKube, where the app runs as several
//! replicas over one Redis:
//!
//! - every alert and dashboard query gives the same numbers whether Prometheus
//!   scrapes one replica or two (each replica's `/metrics` serves the same
//!   cluster-wide totals from Redis, so a plain `sum` counts them once per pod);
//! - the SpinApp is valid against the operator's CRD, and the Prometheus
//!   Operator monitor finds the pods the operator creates, on a port they have.

use std::collections::BTreeMap;

use chatbot_core::config::names;
use chatbot_harness::{project_root, promtool, TestApp};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------
// The shipped queries
// ---------------------------------------------------------------------------

fn load_yaml(relative: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(project_root().join(relative)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Every query an operator sees a number from: each rule in `alerts.yml` and
/// each target of each dashboard panel, named for the report.
fn shipped_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for group in load_yaml("deploy/prometheus/alerts.yml")[0]["groups"]
        .as_vec()
        .expect("rule groups")
    {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("a named rule");
            let expr = rule["expr"].as_str().expect("a rule's expr");
            queries.push((format!("rule {name}"), expr.trim().to_string()));
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(project_root().join("deploy/grafana/rag-chatbot-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    fn panel_targets(panels: &Value, queries: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a target's expr");
                queries.push((
                    format!("panel {:?} {}", panel["title"], target["refId"]),
                    expr.to_string(),
                ));
            }
            // Rows hold their panels.
            panel_targets(&panel["panels"], queries);
        }
    }
    panel_targets(&dashboard["panels"], &mut queries);
    queries
}

// ---------------------------------------------------------------------------
// Scrapes, and promtool over them
// ---------------------------------------------------------------------------

/// One exposed series: its name with its labels in PromQL series notation, and
/// its labels apart (to add the target's labels to).
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

impl Series {
    fn notation(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", quoted(v)))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A `/metrics` body as series and values (the text format's sample lines).
fn parse_exposition(text: &str) -> BTreeMap<String, (Series, f64)> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => (
                name.to_string(),
                parse_labels(rest.strip_suffix('}').expect("closing brace")),
            ),
        };
        samples.insert(series.to_string(), (Series { name, labels }, value));
    }
    samples
}

/// `a="x",b="y"` (the exposition's escapes: `\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start_matches(',');
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => match chars.next().expect("an escape").1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The labels Prometheus Operator gives a `PodMonitor` target (see
/// deploy/spinkube/spinapp.yaml): `honorLabels: true` keeps a label the app
/// exposes itself (`endpoint` on `chatbot_queries_total`) over the target's.
fn replica_target(n: usize) -> Vec<(String, String)> {
    [
        ("job", "rag-chatbot".to_string()),
        ("namespace", "chatbot".to_string()),
        ("pod", format!("rag-chatbot-6b9f7d5c8-replica{n}")),
        ("instance", format!("10.42.0.{}:80", 10 + n)),
        ("container", "rag-chatbot".to_string()),
        ("endpoint", "http-app".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Two scrapes of each replica, five minutes apart, as promtool's input
/// series: each exposed series under each replica's target labels, plus the
/// `up` Prometheus records for the target.
fn input_series(scrapes_per_replica: &[[&str; 2]]) -> Vec<Value> {
    let mut input = Vec::new();
    for (n, scrapes) in scrapes_per_replica.iter().enumerate() {
        let target = replica_target(n);
        let [first, second] = scrapes.map(parse_exposition);
        let up = Series {
            name: "up".into(),
            labels: Vec::new(),
        };
        let mut all: Vec<(Series, Option<f64>, f64)> = vec![(up, Some(1.0), 1.0)];
        for (key, (series, value)) in &second {
            // A series first exposed after the first scrape has no sample then.
            all.push((series.clone(), first.get(key).map(|(_, v)| *v), *value));
        }
        for (mut series, before, after) in all {
            for (k, v) in &target {
                if !series.labels.iter().any(|(name, _)| name == k) {
                    series.labels.push((k.clone(), v.clone()));
                }
            }
            let before = before.map_or("_".to_string(), |v| v.to_string());
            input.push(json!({
                "series": series.notation(),
                "values": format!("{before} {after}"),
            }));
        }
    }
    input
}

/// Each query's result at the second scrape, as promtool prints it: the
/// label set and value of each sample (`NaN` compares equal to itself here).
type Results = Vec<Vec<(String, f64)>>;

/// Evaluates every query over the input series with promtool. promtool only
/// prints a result when it differs from the expected one, so every query
/// expects a sample no query can return, and its `got:` line is read.
fn evaluate(queries: &[(String, String)], input_series: Vec<Value>) -> Results {
    let sentinel = json!([{"labels": "{never_returned=\"sentinel\"}", "value": 0}]);
    let tests = json!({
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "5m",
            "input_series": input_series,
            "promql_expr_test": queries.iter().map(|(_, expr)| json!({
                "expr": expr,
                "eval_time": "5m",
                "exp_samples": sentinel,
            })).collect::<Vec<_>>(),
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads it as it is.
    let path = dir.path().join("replicas_test.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&tests).unwrap()).unwrap();
    let (_, report) = promtool::run(&["test", "rules", path.to_str().unwrap()], None);

    let mut results = Vec::new();
    let mut lines = report.lines().map(str::trim);
    for (_, expr) in queries {
        let header = format!("expr: {expr:?}, time: 5m,");
        lines
            .by_ref()
            .find(|line| *line == header)
            .unwrap_or_else(|| panic!("no result for {expr} in promtool's report:\n{report}"));
        let got = lines
            .find_map(|line| line.strip_prefix("got: "))
            .expect("a got: line");
        results.push(parse_got(got));
    }
    results
}

/// `{a="x", b="y"} 1E+00, {} NaN` or `nil`.
fn parse_got(got: &str) -> Vec<(String, f64)> {
    if got == "nil" {
        return Vec::new();
    }
    let mut samples = Vec::new();
    let mut rest = got;
    while !rest.is_empty() {
        // The label set ends at the first `}` outside a quoted value.
        let mut in_quotes = false;
        let mut escaped = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                let closes = !in_quotes && c == '}';
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_quotes = !in_quotes;
                }
                closes
            })
            .map(|(i, _)| i)
            .expect("a label set");
        let labels = rest[..=end].to_string();
        let after = rest[end + 1..].trim_start();
        let (value, next) = after.split_once(", ").unwrap_or((after, ""));
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("a value: {number}")),
        };
        samples.push((labels, value));
        rest = next;
    }
    samples
}

fn same_result(a: &[(String, f64)], b: &[(String, f64)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, va), (lb, vb))| {
            la == lb
                && ((va.is_nan() && vb.is_nan())
                    || va == vb
                    || (va - vb).abs() <= 1e-9 * va.abs().max(vb.abs()))
        })
}

// ---------------------------------------------------------------------------
// Two replicas
// ---------------------------------------------------------------------------

const PER_SESSION_LIMIT: &str = "3";

/// Traffic through both replicas: misses and hits (a question asked on one
/// replica is a hit on the other), refused input, a session over its limit
/// (429), and replica `b`'s Postgres unreachable (errors, lost history writes).
async fn traffic(a: &TestApp, b: &TestApp, round: &str) {
    let question = format!("What are metrics ({round})?");
    assert_eq!(a.ask(&question, &format!("{round}-a")).await.status, 200);
    assert_eq!(b.ask(&question, &format!("{round}-b")).await.status, 200);
    let other = format!("Something else ({round})?");
    b.ask(&other, &format!("{round}-b2")).await;
    assert_eq!(
        a.post_json("/api/v1/chat/query", &json!({"question": ""}))
            .await
            .unwrap()
            .status,
        400
    );
    let limit: usize = PER_SESSION_LIMIT.parse().unwrap();
    let mut statuses = Vec::new();
    for i in 0..limit + 2 {
        let replica = if i % 2 == 0 { a } else { b };
        statuses.push(
            replica
                .ask(&question, &format!("{round}-burst"))
                .await
                .status,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await.unwrap();
    assert_eq!(response.status, 200);
    response.text()
}

/// Scrapes both replicas at the same moment: they must serve the same totals.
async fn scrape_both(a: &TestApp, b: &TestApp) -> [String; 2] {
    let (from_a, from_b) = (scrape(a).await, scrape(b).await);
    assert_eq!(
        parse_exposition(&from_a),
        parse_exposition(&from_b),
        "replicas over one Redis serve the same numbers"
    );
    [from_a, from_b]
}

#[tokio::test]
async fn every_alert_and_panel_counts_two_replicas_once() {
    let a = TestApp::builder()
        .variable(names::RATE_LIMIT_REQUESTS, PER_SESSION_LIMIT)
        .spawn()
        .await
        .unwrap();
    let b = TestApp::builder()
        .sharing_services_of(&a)
        .variable(names::RATE_LIMIT_REQUESTS, PER_SESSION_LIMIT)
        .address(
            names::POSTGRES_ADDRESS,
            format!(
                "postgres://chatbot@127.0.0.1:{}/chatbot",
                chatbot_harness::unused_port()
            ),
        )
        .spawn()
        .await
        .unwrap();
    let ingest = a
        .ingest(json!([{"id": "d", "source": "s.pdf", "text": "Metrics are numbers."}]))
        .await
        .unwrap();
    assert_eq!(ingest.status, 200);

    traffic(&a, &b, "first").await;
    let [a1, b1] = scrape_both(&a, &b).await;
    traffic(&a, &b, "second").await;
    let [a2, b2] = scrape_both(&a, &b).await;

    let queries = shipped_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    // The truth: what one replica's scrapes say (Redis holds the totals).
    let one_replica = evaluate(&queries, input_series(&[[&a1, &a2]]));
    // What Prometheus sees when it scrapes every pod.
    let two_replicas = evaluate(&queries, input_series(&[[&a1, &a2], [&b1, &b2]]));

    let wrong: Vec<String> = queries
        .iter()
        .zip(one_replica.iter().zip(&two_replicas))
        .filter(|(_, (one, two))| !same_result(one, two))
        .map(|((name, expr), (one, two))| {
            format!("{name}: {expr}\n    one replica:  {one:?}\n    two replicas: {two:?}")
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} queries change with the number of replicas:\n{}",
        wrong.len(),
        queries.len(),
        wrong.join("\n")
    );
    // The comparison means something only where there is a number: a
    // dashboard query has no threshold, so each shows one.
    let empty: Vec<&String> = queries
        .iter()
        .zip(&one_replica)
        .filter(|((name, _), result)| name.starts_with("panel") && result.is_empty())
        .map(|((name, _), _)| name)
        .collect();
    assert!(empty.is_empty(), "panels without data: {empty:?}");
    // An alert returns nothing below its threshold; say which did, so a
    // reader knows which comparisons above were of empty results.
    let quiet: Vec<&String> = queries
        .iter()
        .zip(&one_replica)
        .filter(|((name, _), result)| name.starts_with("rule") && result.is_empty())
        .map(|((name, _), _)| name)
        .collect();
    eprintln!("rules below their threshold in this traffic: {quiet:?}");
}

// ---------------------------------------------------------------------------
// The manifests against what the operators build (tests/fixtures/spin-operator)
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> Yaml {
    load_yaml(&format!("tests/fixtures/spin-operator/{name}"))
        .pop()
        .expect("one document")
}

/// The documents of `deploy/spinkube/spinapp.yaml` by kind.
fn shipped_manifest(kind: &str) -> Yaml {
    load_yaml("deploy/spinkube/spinapp.yaml")
        .into_iter()
        .find(|doc| doc["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/spinkube/spinapp.yaml"))
}

fn describe(value: &Yaml) -> &'static str {
    match value {
        Yaml::Hash(_) => "a map",
        Yaml::Array(_) => "a list",
        Yaml::String(_) => "a string",
        Yaml::Integer(_) => "an integer",
        Yaml::Real(_) => "a number",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Null => "null",
        _ => "something else",
    }
}

/// What the API server would refuse of `value` under a CRD's structural
/// schema: wrong types, missing required fields, unknown fields (kubectl
/// applies with strict field validation), int32 overflow. Patterns are not
/// checked.
fn schema_errors(value: &Yaml, schema: &Yaml, path: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !matches!(value, Yaml::Integer(_) | Yaml::String(_)) {
            errors.push(format!(
                "{path}: {} where an int or string goes",
                describe(value)
            ));
        }
        return errors;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_hash() else {
                return vec![format!("{path}: {} where a map goes", describe(value))];
            };
            for required in schema["required"].as_vec().into_iter().flatten() {
                if !map.contains_key(required) {
                    errors.push(format!(
                        "{path}: `{}` is required",
                        required.as_str().unwrap()
                    ));
                }
            }
            let open = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
                // An object with no fields listed (metadata): the server checks it itself.
                || (schema["properties"].is_badvalue() && schema["additionalProperties"].is_badvalue());
            for (key, field) in map {
                let key = key.as_str().unwrap_or("?");
                let field_path = format!("{path}.{key}");
                let field_schema = &schema["properties"][key];
                if !field_schema.is_badvalue() {
                    errors.extend(schema_errors(field, field_schema, &field_path));
                } else if !schema["additionalProperties"].is_badvalue() {
                    errors.extend(schema_errors(
                        field,
                        &schema["additionalProperties"],
                        &field_path,
                    ));
                } else if !open {
                    errors.push(format!("{field_path}: unknown field"));
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_vec() else {
                return vec![format!("{path}: {} where a list goes", describe(value))];
            };
            if let Some(min) = schema["minItems"].as_i64() {
                if (items.len() as i64) < min {
                    errors.push(format!("{path}: fewer than {min} items"));
                }
            }
            if !schema["items"].is_badvalue() {
                for (i, item) in items.iter().enumerate() {
                    errors.extend(schema_errors(
                        item,
                        &schema["items"],
                        &format!("{path}[{i}]"),
                    ));
                }
            }
        }
        Some("string") if value.as_str().is_none() => {
            errors.push(format!("{path}: {} where a string goes", describe(value)));
        }
        Some("boolean") if value.as_bool().is_none() => {
            errors.push(format!("{path}: {} where a boolean goes", describe(value)));
        }
        Some("integer") => match value.as_i64() {
            None => errors.push(format!("{path}: {} where an integer goes", describe(value))),
            Some(n) if schema["format"].as_str() == Some("int32") && i32::try_from(n).is_err() => {
                errors.push(format!("{path}: {n} is not an int32"))
            }
            Some(_) => {}
        },
        _ => {}
    }
    errors
}

#[test]
fn the_spinapp_is_valid_against_the_operators_crd() {
    let schema = fixture("spinapp-schema.yaml");
    let app = shipped_manifest("SpinApp");
    assert_eq!(
        app["apiVersion"].as_str(),
        Some("core.spinkube.dev/v1alpha1")
    );
    let errors = schema_errors(&app, &schema, "SpinApp");
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_schema_check_refuses_what_the_api_server_refuses() {
    // The check itself: each of these edits of the shipped SpinApp is refused.
    let schema = fixture("spinapp-schema.yaml");
    let edits: [(&str, &str); 4] = [
        ("replicas: 3", "replicas: \"3\""),
        ("  executor: containerd-shim-spin\n", ""),
        ("  replicas: 3\n", "  replicas: 3\n  replica: 3\n"),
        ("key: redis_address }", "key: redis_address, default: x }"),
    ];
    let text =
        std::fs::read_to_string(project_root().join("deploy/spinkube/spinapp.yaml")).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        let edited = YamlLoader::load_from_str(&text.replacen(from, to, 1)).unwrap();
        let app = edited
            .iter()
            .find(|d| d["kind"].as_str() == Some("SpinApp"))
            .unwrap();
        assert!(
            !schema_errors(app, &schema, "SpinApp").is_empty(),
            "{from:?} -> {to:?} passed"
        );
    }
}

/// `resources.yaml` for the SpinApp: the Service and the pod template the
/// operator builds, NAME replaced and `spec.podLabels` merged under its labels.
struct OperatorBuilt {
    service: Yaml,
    pod_labels: BTreeMap<String, String>,
    container_ports: Vec<(Option<String>, i64)>,
}

fn operator_built(app: &Yaml) -> OperatorBuilt {
    let name = app["metadata"]["name"].as_str().expect("metadata.name");
    let text =
        std::fs::read_to_string(project_root().join("tests/fixtures/spin-operator/resources.yaml"))
            .unwrap()
            .replace("NAME", name);
    let built = YamlLoader::load_from_str(&text).unwrap().pop().unwrap();
    let strings = |map: &Yaml| -> BTreeMap<String, String> {
        map.as_hash()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
            .collect()
    };
    let mut pod_labels = strings(&app["spec"]["podLabels"]);
    pod_labels.extend(strings(&built["pod"]["labels"]));
    let container_ports = built["pod"]["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_vec().unwrap().iter())
        .map(|p| {
            (
                p["name"].as_str().map(String::from),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    OperatorBuilt {
        service: built["service"].clone(),
        pod_labels,
        container_ports,
    }
}

/// Whether a `matchLabels` selector selects objects with these labels.
fn selects(selector: &Yaml, labels: &BTreeMap<String, String>) -> Result<(), String> {
    assert!(
        selector["matchExpressions"].is_badvalue(),
        "only matchLabels is checked here"
    );
    let wanted = selector["matchLabels"].as_hash().ok_or("no matchLabels")?;
    for (key, value) in wanted {
        let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap());
        if labels.get(key).map(String::as_str) != Some(value) {
            return Err(format!(
                "selects {key}={value}, but the labels are {labels:?}"
            ));
        }
    }
    Ok(())
}

/// What is wrong with the monitor under what the operators build, and the
/// `job` label its targets get.
fn monitor_problems(
    monitor: &Yaml,
    built: &OperatorBuilt,
    namespace: &str,
) -> (Vec<String>, String) {
    let facts = fixture("prometheus-operator.yaml");
    let kind = monitor["kind"].as_str().unwrap();
    let spec = &monitor["spec"];
    let named_container_port = |port: &str| {
        built
            .container_ports
            .iter()
            .any(|(name, _)| name.as_deref() == Some(port))
    };
    let mut problems = Vec::new();
    let (endpoints, job) = match kind {
        "PodMonitor" => {
            assert_eq!(
                facts["podMonitor"]["portNames"].as_str(),
                Some("containerPort")
            );
            if let Err(e) = selects(&spec["selector"], &built.pod_labels) {
                problems.push(format!("selector finds no pod: {e}"));
            }
            let endpoints = spec["podMetricsEndpoints"]
                .as_vec()
                .cloned()
                .unwrap_or_default();
            for ep in &endpoints {
                match ep["port"].as_str() {
                    Some(port) if named_container_port(port) => {}
                    other => problems.push(format!(
                        "port {other:?} names no container port of the pods ({:?})",
                        built.container_ports
                    )),
                }
            }
            let job = match spec["jobLabel"].as_str() {
                Some(label) => built.pod_labels.get(label).cloned().unwrap_or_default(),
                None => facts["podMonitor"]["defaultJob"]
                    .as_str()
                    .unwrap()
                    .replace("NAMESPACE", namespace)
                    .replace("MONITOR", monitor["metadata"]["name"].as_str().unwrap()),
            };
            (endpoints, job)
        }
        "ServiceMonitor" => {
            assert_eq!(
                facts["serviceMonitor"]["portNames"].as_str(),
                Some("servicePort")
            );
            let service_labels: BTreeMap<String, String> = built.service["labels"]
                .as_hash()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
                .collect();
            if let Err(e) = selects(&spec["selector"], &service_labels) {
                problems.push(format!("selector finds no Service: {e}"));
            }
            let service_ports = built.service["ports"].as_vec().unwrap();
            let endpoints = spec["endpoints"].as_vec().cloned().unwrap_or_default();
            for ep in &endpoints {
                let found = match (ep["port"].as_str(), &ep["targetPort"]) {
                    (Some(port), _) => service_ports
                        .iter()
                        .any(|p| p["name"].as_str() == Some(port)),
                    (None, Yaml::String(port)) => named_container_port(port),
                    (None, Yaml::Integer(n)) => built.container_ports.iter().any(|(_, p)| p == n),
                    _ => false,
                };
                if !found {
                    let ports: Vec<String> = service_ports
                        .iter()
                        .map(|p| {
                            format!(
                                "{} {} -> {}",
                                p["name"].as_str().unwrap_or("(unnamed)"),
                                p["port"].as_i64().unwrap_or_default(),
                                p["targetPort"].as_str().unwrap_or("?")
                            )
                        })
                        .collect();
                    problems.push(format!(
                        "endpoint port {:?} / targetPort {:?} names no port of the Service the \
                         operator builds (ports: {ports:?}; container ports: {:?})",
                        ep["port"].as_str(),
                        ep["targetPort"].as_str(),
                        built.container_ports
                    ));
                }
            }
            let job = match spec["jobLabel"].as_str() {
                Some(label) => service_labels.get(label).cloned().unwrap_or_default(),
                None => built.service["name"].as_str().unwrap().to_string(),
            };
            (endpoints, job)
        }
        other => panic!("not a monitor: {other}"),
    };
    if endpoints.is_empty() {
        problems.push("no endpoint".into());
    }
    for ep in &endpoints {
        if ep["path"].as_str().unwrap_or("/metrics") != "/metrics" {
            problems.push(format!("path {:?} is not /metrics", ep["path"]));
        }
    }
    // A label the app exposes that the operator also sets on targets is renamed
    // exported_<name> unless honorLabels: then `{endpoint="query"}` finds nothing.
    let target_labels: Vec<&str> = facts["targetLabels"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let clashing: Vec<&str> = chatbot_core::telemetry::metrics::registry::REGISTRY
        .iter()
        .flat_map(|m| m.labels.iter().copied())
        .filter(|l| target_labels.contains(l))
        .collect();
    for ep in &endpoints {
        if !clashing.is_empty() && ep["honorLabels"].as_bool() != Some(true) {
            problems.push(format!(
                "the app's labels {clashing:?} are also target labels: honorLabels must be true"
            ));
        }
    }
    (problems, job)
}

#[test]
fn the_monitor_finds_the_pods_the_operator_creates() {
    let app = shipped_manifest("SpinApp");
    let built = operator_built(&app);
    let monitors: Vec<Yaml> = load_yaml("deploy/spinkube/spinapp.yaml")
        .into_iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("PodMonitor" | "ServiceMonitor")))
        .collect();
    assert_eq!(monitors.len(), 1, "one monitor");
    // Applied with the SpinApp, so in its namespace.
    let (problems, job) = monitor_problems(&monitors[0], &built, "chatbot");
    assert!(problems.is_empty(), "{problems:#?}");
    // The alert on `up` must name the job these targets get.
    let alerts =
        std::fs::read_to_string(project_root().join("deploy/prometheus/alerts.yml")).unwrap();
    assert!(
        alerts.contains(&format!("up{{job=\"{job}\"}}")),
        "the monitor's targets get job=\"{job}\", which alerts.yml's `up` alert does not name"
    );
}
