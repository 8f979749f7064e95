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

async fn ask(app: &TestApp, question: &str, session: &str) -> u16 {
    app.post_json(
        "/api/v1/chat/query",
        &json!({"question": question, "session_id": session}),
    )
    .await
    .unwrap()
    .status
}

/// Traffic through both replicas: misses and hits (a question asked on one
/// replica is a hit on the other), refused input, a session over its limit
/// (429), and replica `b`'s Postgres unreachable (errors, lost history writes).
async fn traffic(a: &TestApp, b: &TestApp, round: &str) {
    let question = format!("What are metrics ({round})?");
    assert_eq!(ask(a, &question, &format!("{round}-a")).await, 200);
    assert_eq!(ask(b, &question, &format!("{round}-b")).await, 200);
    let other = format!("Something else ({round})?");
    ask(b, &other, &format!("{round}-b2")).await;
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
        statuses.push(ask(replica, &question, &format!("{round}-burst")).await);
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
