//! Generated code for the `onair.v1` gRPC API, and [`convert`]: the one mapping between
//! these types and the domain types of `onair-core`, validating on the way in.

pub mod convert;

/// `onair.v1`: registry, signaling and recorder contracts.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("onair.v1");
}

/// Encoded `FileDescriptorSet` of every onair proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("onair_descriptor");
