//! `semantic_bench`: the semantic answer cache end to end, with a real
//! embedding model (all-MiniLM-L6-v2 in `deploy/bench/semantic/embed_server.py`,
//! which forwards chat completions to the OpenAI stand-in), the app under the
//! harness host, real Redis and Postgres, and the Qdrant stand-in's cosine.
//!
//! Run: `bash deploy/bench/semantic/setup.sh`, build the components, then
//! `cargo run -p chatbot-harness --bin semantic_bench [-- --pairs N --misses N]`.
//!
//! 1. Every labelled pair of `deploy/bench/semantic/pairs.jsonl` in a session
//!    of its own: `a` is asked (a miss, answered and indexed), then `b` with
//!    a threshold that serves anything, so `X-Cache-Match` gives the score
//!    the app computed; precision, recall and hit rate per threshold follow.
//! 2. What a semantic lookup costs a miss: the same new questions asked with
//!    the cache off and on (fresh sessions: every lookup misses), and what a
//!    semantic hit costs next to an exact one.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chatbot_core::config::names;
use chatbot_harness::stubs::openai::CHAT;
use chatbot_harness::stubs::qdrant::{SEARCH, UPSERT};
use chatbot_harness::{project_root, BufferedResponse, TestApp};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const MODEL: &str = "all-minilm-l6-v2";

struct EmbedServer {
    child: tokio::process::Child,
    url: String,
}

impl EmbedServer {
    /// Starts the model's server, forwarding chat to `forward`.
    async fn start(forward: &str) -> Result<Self> {
        let cache = std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
        let python = format!("{cache}/rag-chatbot/bench-venv/bin/python");
        anyhow::ensure!(
            std::path::Path::new(&python).exists(),
            "no {python}: run `bash deploy/bench/semantic/setup.sh` first"
        );
        let mut child = tokio::process::Command::new(python)
            .arg(project_root().join("deploy/bench/semantic/embed_server.py"))
            .args(["--port", "0", "--forward", forward])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the embedding server did not start")??
            .context("the embedding server exited")?;
        let origin = line
            .strip_prefix("listening on ")
            .context(format!("unexpected first line: {line}"))?
            .trim()
            .to_string();
        Ok(Self {
            child,
            url: format!("{origin}/v1"),
        })
    }
}

/// An app whose embeddings come from the real model.
async fn app(base: &TestApp, embeddings: &EmbedServer, threshold: &str) -> Result<TestApp> {
    TestApp::builder()
        .sharing_services_of(base)
        .address(names::OPENAI_BASE_URL, embeddings.url.clone())
        .variable(names::EMBEDDING_MODEL, MODEL)
        .variable(names::SEMANTIC_CACHE_THRESHOLD, threshold)
        .variable("rate_limit_requests", "1000000")
        .spawn()
        .await
}

async fn ask(app: &TestApp, question: &str, session: &str) -> Result<(BufferedResponse, f64)> {
    let started = Instant::now();
    let response = app
        .post_json(
            "/api/v1/chat/query",
            &json!({"question": question, "session_id": session}),
        )
        .await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(response.status == 200, "{}", response.text());
    app.app.settled().await;
    Ok((response, ms))
}

fn score_of(response: &BufferedResponse) -> Option<f64> {
    response
        .header("x-cache-match")?
        .strip_prefix("semantic; score=")?
        .parse()
        .ok()
}

fn p50(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Pair {
    a: String,
    b: String,
    same: bool,
    kind: String,
}

fn pairs() -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(project_root().join("deploy/bench/semantic/pairs.jsonl"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line)?;
            Ok(Pair {
                a: v["a"].as_str().context("a")?.to_string(),
                b: v["b"].as_str().context("b")?.to_string(),
                same: v["same"].as_bool().context("same")?,
                kind: v["kind"].as_str().context("kind")?.to_string(),
            })
        })
        .collect()
}

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = TestApp::builder().spawn().await?;
    base.openai.controls().set_latency(CHAT, Duration::ZERO);
    // The server forwards paths as they are: the stand-in's origin.
    let embeddings = EmbedServer::start(base.openai.base_url().trim_end_matches("/v1")).await?;
    let pairs = pairs()?;
    let pairs = &pairs[..flag(&args, "--pairs", pairs.len()).min(pairs.len())];

    // 1. The score of every pair, as the app computes it.
    let scoring = app(&base, &embeddings, "0.000001").await?;
    let ingested = scoring
        .ingest(json!([{"id": "acme", "source": "acme.md", "text": "Acme Cloud stores objects in buckets."}]))
        .await?;
    anyhow::ensure!(ingested.status == 200, "{}", ingested.text());
    let mut scored: Vec<(f64, bool, String)> = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let session = format!("pair-{i}");
        let (first, _) = ask(&scoring, &pair.a, &session).await?;
        anyhow::ensure!(
            first.header("x-cache") == Some("MISS"),
            "pair {i}: a was not a miss"
        );
        let (second, _) = ask(&scoring, &pair.b, &session).await?;
        // Not served at all: below any threshold (a negative cosine).
        let score = score_of(&second).unwrap_or(-1.0);
        scored.push((score, pair.same, pair.kind.clone()));
    }
    let positives = scored.iter().filter(|(_, same, _)| *same).count();
    let kinds = ["entity", "negation", "number", "date", "intent"];
    println!(
        "{} pairs ({positives} paraphrases), all-MiniLM-L6-v2, scores from X-Cache-Match",
        scored.len()
    );
    println!();
    println!("| threshold | served (hit rate) | precision | recall | false hits: entity / negation / number / date / intent |");
    println!("|---:|---:|---:|---:|---|");
    let mut thresholds: Vec<f64> = (0..=24).map(|k| 0.50 + 0.02 * k as f64).collect();
    thresholds.extend([0.99, 0.995, 1.0]);
    for t in thresholds {
        let served: Vec<&(f64, bool, String)> =
            scored.iter().filter(|(s, _, _)| *s >= t - 1e-9).collect();
        let right = served.iter().filter(|(_, same, _)| *same).count();
        let precision = if served.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.3}", right as f64 / served.len() as f64)
        };
        let wrong: Vec<String> = kinds
            .iter()
            .map(|k| {
                served
                    .iter()
                    .filter(|(_, same, kind)| !same && kind == k)
                    .count()
                    .to_string()
            })
            .collect();
        println!(
            "| {t:.3} | {} ({:.1}%) | {precision} | {:.3} | {} |",
            served.len(),
            100.0 * served.len() as f64 / scored.len() as f64,
            right as f64 / positives.max(1) as f64,
            wrong.join(" / ")
        );
    }
    let top_near_miss = scored
        .iter()
        .filter(|(_, same, _)| !same)
        .map(|(s, _, _)| *s)
        .fold(f64::MIN, f64::max);
    let top_paraphrase = scored
        .iter()
        .filter(|(_, same, _)| *same)
        .map(|(s, _, _)| *s)
        .fold(f64::MIN, f64::max);
    println!();
    println!("highest-scoring near miss {top_near_miss:.4}, highest-scoring paraphrase {top_paraphrase:.4}");

    // 2. What the lookup costs.
    let misses = flag(&args, "--misses", 100).min(pairs.len());
    let questions: Vec<&str> = pairs.iter().map(|p| p.a.as_str()).take(misses).collect();
    println!();
    println!("| c=1, chat stand-in answering at once | requests | p50 ms | Qdrant searches per request | Qdrant upserts per request |");
    println!("|---|---:|---:|---:|---:|");
    for (name, threshold) in [
        ("miss, semantic cache off", "off"),
        ("miss, semantic cache on (lookup misses)", "0.95"),
    ] {
        let app = app(&base, &embeddings, threshold).await?;
        let qdrant = app.qdrant.controls();
        let (searches, upserts) = (qdrant.calls(SEARCH), qdrant.calls(UPSERT));
        let mut latencies = Vec::new();
        for (i, question) in questions.iter().enumerate() {
            // A fresh session: in session scope nothing of it is cached yet.
            let session = format!("cost-{threshold}-{i}");
            // Both rows find the embedding cached (part 1 embedded every
            // question): what differs is the lookup.
            let (response, ms) = ask(&app, question, &session).await?;
            anyhow::ensure!(
                response.header("x-cache") == Some("MISS"),
                "{name}: not a miss"
            );
            latencies.push(ms);
        }
        let n = questions.len() as f64;
        println!(
            "| {name} | {} | {:.1} | {:.2} | {:.2} |",
            questions.len(),
            p50(latencies),
            (qdrant.calls(SEARCH) - searches) as f64 / n,
            (qdrant.calls(UPSERT) - upserts) as f64 / n,
        );
    }
    let app = app(&base, &embeddings, "0.000001").await?;
    let qdrant = app.qdrant.controls();
    let (mut exact, mut semantic, mut searches) = (Vec::new(), Vec::new(), 0);
    for (i, pair) in pairs.iter().take(misses).enumerate() {
        let session = format!("hit-{i}");
        ask(&app, &pair.a, &session).await?;
        let before = qdrant.calls(SEARCH);
        let (response, ms) = ask(&app, &pair.a, &session).await?;
        anyhow::ensure!(response.header("x-cache-match") == Some("exact"));
        anyhow::ensure!(qdrant.calls(SEARCH) == before, "an exact hit searched");
        exact.push(ms);
        let before = qdrant.calls(SEARCH);
        let (response, ms) = ask(&app, &pair.b, &session).await?;
        anyhow::ensure!(score_of(&response).is_some(), "not a semantic hit");
        searches += qdrant.calls(SEARCH) - before;
        semantic.push(ms);
    }
    let n = semantic.len();
    println!(
        "| exact hit | {} | {:.1} | 0 | 0 |",
        exact.len(),
        p50(exact)
    );
    println!(
        "| semantic hit (embedding cached; the passages are searched alongside) | {n} | {:.1} | {:.2} | 0 |",
        p50(semantic),
        searches as f64 / n as f64
    );
    drop(embeddings.child);
    Ok(())
}
