//! Outgoing `wasi:http`: sent for real, but only to hosts in the component's
//! `allowed_outbound_hosts`, as Spin's outbound HTTP factor does; anything
//! else fails with `HTTP-request-denied`.

use std::sync::Arc;

use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, OutgoingRequestConfig};
use wasmtime_wasi_http::p2::{HttpResult, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::{ComponentEnv, HostCounters, HostState};

/// Spin's outbound HTTP policy: the component's `allowed_outbound_hosts`.
pub(crate) struct OutboundHttp {
    pub(crate) env: Arc<ComponentEnv>,
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: hyper::Request<HyperOutgoingBody>,
        config: OutgoingRequestConfig,
    ) -> HttpResult<HostFutureIncomingResponse> {
        let url = request.uri().to_string();
        if !self.env.allowed_hosts.allows_url(&url) {
            HostCounters::bump(&self.env.counters.denied);
            return Ok(HostFutureIncomingResponse::ready(Ok(Err(
                ErrorCode::HttpRequestDenied,
            ))));
        }
        HostCounters::bump(&self.env.counters.outbound_http);
        Ok(wasmtime_wasi_http::p2::default_send_request(
            request, config,
        ))
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}
