//! A proxy in front of a real Redis that fails the commands touching chosen
//! keys as a Redis in trouble does (WRONGTYPE, OOM, silence, a reset), so a
//! test can check that every check protecting another user's data or money
//! fails closed (`tests/promises.rs`). Commands pass one at a time, in order,
//! as pipelined by the client; everything else is relayed byte for byte.

use anyhow::{Context, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    WrongType,
    OutOfMemory,
    /// No answer to that command, nor to any after it on its connection.
    Silent,
    /// The connection closes at once.
    Reset,
}

#[derive(Default)]
struct State {
    fault: Mutex<Option<(Vec<u8>, FaultKind)>>,
    failed: AtomicU64,
}

/// The proxy; it stops when dropped.
pub struct RedisFaults {
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for RedisFaults {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl RedisFaults {
    /// A proxy on a free loopback port in front of `upstream`
    /// (`redis://host:port[/db]`), and the URL to reach Redis through it.
    pub async fn in_front_of(upstream: &str) -> Result<(Self, String)> {
        let rest = upstream
            .strip_prefix("redis://")
            .context("a redis:// URL")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let target = authority.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("redis://{}/{path}", listener.local_addr()?);
        let state = Arc::new(State::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        let _ = relay(client, server, state).await;
                    }
                });
            }
        });
        Ok((Self { state, accept }, url))
    }

    /// Every command from now on with an argument starting with
    /// `key_prefix` fails as `kind` (replacing any earlier fault).
    pub fn fail(&self, key_prefix: &str, kind: FaultKind) {
        *self.state.fault.lock().unwrap() = Some((key_prefix.as_bytes().to_vec(), kind));
    }

    /// Commands are relayed again.
    pub fn heal(&self) {
        *self.state.fault.lock().unwrap() = None;
    }

    /// Commands failed so far (on a silent connection, every command sent on it).
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::Relaxed)
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let mut from_client = BufReader::new(client_read);
    let mut from_server = BufReader::new(server_read);
    loop {
        let mut request = Vec::new();
        let args = read_frame(&mut from_client, &mut request).await?;
        let fault = {
            let fault = state.fault.lock().unwrap();
            fault.as_ref().and_then(|(prefix, kind)| {
                args.iter()
                    .any(|arg| arg.starts_with(prefix))
                    .then_some(*kind)
            })
        };
        if let Some(kind) = fault {
            state.failed.fetch_add(1, Ordering::Relaxed);
            match kind {
                FaultKind::WrongType => {
                    client_write
                        .write_all(
                            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                        )
                        .await?;
                    continue;
                }
                FaultKind::OutOfMemory => {
                    client_write
                        .write_all(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n")
                        .await?;
                    continue;
                }
                FaultKind::Silent => {
                    // Hold the connection, answering nothing, until the client
                    // goes; every command sent on it counts as failed.
                    loop {
                        let mut ignored = Vec::new();
                        if read_frame(&mut from_client, &mut ignored).await.is_err() {
                            return Ok(());
                        }
                        state.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Dropping both halves closes the client's connection.
                FaultKind::Reset => return Ok(()),
            }
        }
        server_write.write_all(&request).await?;
        let mut reply = Vec::new();
        read_frame(&mut from_server, &mut reply).await?;
        client_write.write_all(&reply).await?;
    }
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
/// A frame's bulk strings, read.
type Frame<'a> = Pin<Box<dyn Future<Output = std::io::Result<Vec<Vec<u8>>>> + Send + 'a>>;

/// Reads one RESP frame (RESP2 or RESP3, or an inline command) into `raw`;
/// returns its bulk strings (a request's command and arguments).
fn read_frame<'a>(reader: &'a mut Reader, raw: &'a mut Vec<u8>) -> Frame<'a> {
    Box::pin(async move {
        let start = raw.len();
        if reader.read_until(b'\n', raw).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = raw[start..]
            .strip_suffix(b"\r\n")
            .unwrap_or(&raw[start..])
            .to_vec();
        let Some((&kind, rest)) = line.split_first() else {
            return Ok(Vec::new());
        };
        let number = || -> std::io::Result<i64> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::other("a RESP length"))
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Vec::new()),
            b'$' | b'!' | b'=' => {
                let length = number()?;
                if length < 0 {
                    return Ok(Vec::new());
                }
                let body_start = raw.len();
                raw.resize(body_start + length as usize + 2, 0);
                reader.read_exact(&mut raw[body_start..]).await?;
                Ok(vec![raw[body_start..body_start + length as usize].to_vec()])
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let count = number()?;
                let elements = match kind {
                    b'%' | b'|' => count * 2,
                    _ => count,
                };
                let mut strings = Vec::new();
                for _ in 0..elements.max(0) {
                    strings.extend(read_frame(reader, raw).await?);
                }
                if kind == b'|' {
                    // Attributes come before the reply they describe.
                    read_frame(reader, raw).await?;
                }
                Ok(strings)
            }
            // An inline command: its words.
            _ => Ok(line
                .split(|b| *b == b' ')
                .filter(|w| !w.is_empty())
                .map(<[u8]>::to_vec)
                .collect()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn faults_hit_only_the_keys_named_and_heal() {
        let upstream = crate::services::services().fresh_redis().await.unwrap();
        let (faults, url) = RedisFaults::in_front_of(&upstream).await.unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("chatbot:x:1")
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        let (a, b): (String, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg("chatbot:x:1")
            .cmd("GET")
            .arg("other")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((a.as_str(), b), ("v", None), "a pipeline passes whole");

        faults.fail("chatbot:x:", FaultKind::WrongType);
        let wrong: redis::RedisResult<String> = redis::cmd("GET")
            .arg("chatbot:x:1")
            .query_async(&mut conn)
            .await;
        assert!(format!("{:?}", wrong.unwrap_err()).contains("WRONGTYPE"));
        let other: Option<String> = redis::cmd("GET")
            .arg("other")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(other, None);
        faults.fail("chatbot:x:", FaultKind::OutOfMemory);
        let full: redis::RedisResult<String> = redis::cmd("GET")
            .arg("chatbot:x:1")
            .query_async(&mut conn)
            .await;
        assert!(format!("{:?}", full.unwrap_err()).contains("OOM"));
        faults.heal();
        let healed: String = redis::cmd("GET")
            .arg("chatbot:x:1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(healed, "v");
        assert_eq!(faults.failed(), 2);

        faults.fail("chatbot:x:", FaultKind::Reset);
        let reset: redis::RedisResult<String> = redis::cmd("GET")
            .arg("chatbot:x:1")
            .query_async(&mut conn)
            .await;
        assert!(reset.is_err());
        faults.fail("chatbot:x:", FaultKind::Silent);
        let mut fresh = client.get_multiplexed_async_connection().await.unwrap();
        let silent = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("GET")
                .arg("chatbot:x:1")
                .query_async::<String>(&mut fresh),
        )
        .await;
        assert!(silent.is_err(), "no answer: {silent:?}");
    }
}
