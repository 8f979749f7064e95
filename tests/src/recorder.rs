//! Drives the metrics component through its `chatbot:metrics/recorder`
//! export, as the query handler it is composed into does: one instance for
//! every call, which keeps its own Redis connection.

use chatbot_core::config::names;
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::Store;

use crate::bindings::metrics::exports::chatbot::metrics::recorder::{Batch, Error, Sample};
use crate::bindings::metrics::{Metrics, MetricsPre};
use crate::host::{Counts, HostState};
use crate::runtime::Library;

pub struct RecorderUnderTest {
    library: Arc<Library>,
    pre: MetricsPre<HostState>,
    /// The one instance, made by the first call.
    instance: tokio::sync::Mutex<Option<(Store<HostState>, Metrics)>>,
}

pub fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

impl RecorderUnderTest {
    pub fn load(redis_address: &str) -> Result<Self> {
        let variables =
            BTreeMap::from([(names::REDIS_ADDRESS.to_string(), redis_address.to_string())]);
        let allowed = vec![crate::origin_of(redis_address)];
        let path = crate::project_root().join("target/wasm32-wasip2/release/metrics.wasm");
        let library = Arc::new(Library::load(&path, variables, &allowed)?);
        let pre = MetricsPre::new(library.instance_pre().clone())?;
        Ok(Self {
            library,
            pre,
            instance: tokio::sync::Mutex::new(None),
        })
    }

    /// One batch, as one request would record it.
    pub async fn record(
        &self,
        samples: Vec<Sample>,
        session: Option<&str>,
    ) -> Result<Result<(), Error>> {
        let mut kept = self.instance.lock().await;
        if kept.is_none() {
            let mut store = self.library.new_store();
            let instance = self.pre.instantiate_async(&mut store).await?;
            *kept = Some((store, instance));
        }
        let (store, instance) = kept.as_mut().expect("made above");
        let guest = instance.chatbot_metrics_recorder();
        let batch = Batch {
            samples,
            seen_session: session.map(str::to_string),
        };
        let recorded = store
            .run_concurrent(async |accessor| {
                guest
                    .call_record_batch(accessor, batch, crate::limiter::TIMEOUT_MS)
                    .await
            })
            .await??;
        Ok(recorded)
    }

    pub fn counts(&self) -> Counts {
        self.library.env.counters.snapshot()
    }
}
