//! Outgoing `wasi:http`: sent for real, but only to hosts in the component's
//! `allowed_outbound_hosts`, as Spin's outbound HTTP factor does; anything
//! else fails with `HTTP-request-denied`.

use wasmtime_wasi_http::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::body::HyperOutgoingBody;
use wasmtime_wasi_http::types::{HostFutureIncomingResponse, OutgoingRequestConfig};
use wasmtime_wasi_http::{HttpResult, WasiHttpCtx, WasiHttpView};

use super::{HostCounters, HostState};

impl WasiHttpView for HostState {
    fn ctx(&mut self) -> &mut WasiHttpCtx {
        &mut self.http
    }

    fn table(&mut self) -> &mut wasmtime::component::ResourceTable {
        &mut self.table
    }

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
        Ok(wasmtime_wasi_http::types::default_send_request(
            request, config,
        ))
    }
}
