//! Component dependencies, composed the way Spin composes them: each
//! `[component.<id>.dependencies]` entry's component is plugged into the
//! matching import of the dependent component (wac-graph's `plug`, which Spin's
//! `spin-compose` also builds on). Imports the plugs share (Redis, variables,
//! WASI) stay shared imports of the result, so a lent `borrow<connection>`
//! crosses the boundary as the same host resource.

use anyhow::{anyhow, bail, Context, Result};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

/// Plugs each dependency (import name, component bytes) into `socket`.
pub fn compose(socket: &[u8], dependencies: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let socket_package =
        Package::from_bytes("app:socket", None, socket.to_vec(), graph.types_mut())
            .context("reading the dependent component")?;
    let socket = graph.register_package(socket_package)?;
    let imports: Vec<String> = graph.types()[graph[socket].ty()]
        .imports
        .keys()
        .cloned()
        .collect();
    let mut plugs = Vec::new();
    for (index, (import, bytes)) in dependencies.iter().enumerate() {
        if !imports.iter().any(|i| i == import) {
            bail!("the component does not import {import:?} (it imports {imports:?})");
        }
        let package = Package::from_bytes(
            &format!("app:dependency{index}"),
            None,
            bytes.clone(),
            graph.types_mut(),
        )
        .with_context(|| format!("reading the component for dependency {import:?}"))?;
        let id = graph.register_package(package)?;
        if !graph.types()[graph[id].ty()].exports.contains_key(import) {
            bail!("the component given for {import:?} does not export it");
        }
        plugs.push(id);
    }
    wac_graph::plug(&mut graph, plugs, socket).map_err(|e| anyhow!("{e:?}"))?;
    graph
        .encode(EncodeOptions::default())
        .context("encoding the composed component")
}
