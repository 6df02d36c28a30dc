//! Generated code for the `onair.v1` gRPC API. Services convert these types to
//! their own domain types at their edge; nothing here has behaviour.

/// `onair.v1`: registry, signaling and recorder contracts.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("onair.v1");
}

/// Encoded `FileDescriptorSet` of every onair proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("onair_descriptor");
