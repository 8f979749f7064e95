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

/// The same policy for `wasi:http@0.3` (WASIp3 components).
mod p3 {
    use std::future::Future;

    use bytes::Bytes;
    use http_body_util::combinators::UnsyncBoxBody;
    use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
    use wasmtime_wasi_http::p3::{RequestOptions, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

    use super::{HostCounters, HostState, OutboundHttp};

    type Sent = Result<
        (
            http::Response<UnsyncBoxBody<Bytes, ErrorCode>>,
            Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
        ),
        wasmtime_wasi::TrappableError<ErrorCode>,
    >;

    impl WasiHttpHooks for OutboundHttp {
        fn send_request(
            &mut self,
            request: http::Request<UnsyncBoxBody<Bytes, ErrorCode>>,
            options: Option<RequestOptions>,
            fut: Box<dyn Future<Output = Result<(), ErrorCode>> + Send>,
        ) -> Box<dyn Future<Output = Sent> + Send> {
            let url = request.uri().to_string();
            if !self.env.allowed_hosts.allows_url(&url) {
                HostCounters::bump(&self.env.counters.denied);
                return Box::new(async { Err(ErrorCode::HttpRequestDenied.into()) });
            }
            HostCounters::bump(&self.env.counters.outbound_http);
            _ = fut;
            Box::new(async move {
                use http_body_util::BodyExt;
                let (response, io) =
                    wasmtime_wasi_http::p3::default_send_request(request, options).await?;
                Ok((
                    response.map(BodyExt::boxed_unsync),
                    Box::new(io) as Box<dyn Future<Output = _> + Send>,
                ))
            })
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
}
