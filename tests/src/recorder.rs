//! Drives the metrics component through its `chatbot:metrics/recorder`
//! export, lending it a Redis connection the way the query handler does.

use chatbot_core::config::names;
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::component::Resource;

use crate::bindings::fermyon::spin2_0_0::redis::HostConnection;
use crate::bindings::metrics::exports::chatbot::metrics::recorder::{Batch, Error, Sample};
use crate::bindings::metrics::MetricsPre;
use crate::host::Counts;
use crate::runtime::Library;

pub struct RecorderUnderTest {
    library: Arc<Library>,
    pre: MetricsPre<crate::host::HostState>,
    redis_address: String,
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
            redis_address: redis_address.to_string(),
        })
    }

    /// One batch, as one request would record it: fresh instance, lent connection.
    pub async fn record(
        &self,
        samples: Vec<Sample>,
        session: Option<&str>,
    ) -> Result<Result<(), Error>> {
        let mut store = self.library.new_store();
        let conn: Resource<_> = match store.data_mut().open(self.redis_address.clone()).await? {
            Ok(conn) => conn,
            Err(e) => anyhow::bail!("the host could not open Redis: {e:?}"),
        };
        let borrowed = Resource::new_borrow(conn.rep());
        let instance = self.pre.instantiate_async(&mut store).await?;
        let batch = Batch {
            samples,
            seen_session: session.map(str::to_string),
        };
        instance
            .chatbot_metrics_recorder()
            .call_record_batch(&mut store, borrowed, &batch)
            .await
            .map_err(anyhow::Error::from)
    }

    /// A batch recorded on a connection the recorder opens itself.
    pub async fn record_standalone(&self, samples: Vec<Sample>) -> Result<Result<(), Error>> {
        let mut store = self.library.new_store();
        let instance = self.pre.instantiate_async(&mut store).await?;
        let batch = Batch {
            samples,
            seen_session: None,
        };
        instance
            .chatbot_metrics_recorder()
            .call_record_batch_standalone(&mut store, &batch)
            .await
            .map_err(anyhow::Error::from)
    }

    pub fn counts(&self) -> Counts {
        self.library.env.counters.snapshot()
    }
}
