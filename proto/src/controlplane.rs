//! The control plane's watch protocol (`proto/weir/controlplane/v1/control_plane.proto`): the
//! messages a gateway and the control plane exchange, the tonic client the gateway uses, and the
//! server trait the control plane implements.

/// Version 1 of the watch protocol (package `weir.controlplane.v1`).
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("weir.controlplane.v1");
}
