//! The generated `segd.v1` protobuf types and gRPC stubs, and the encoded
//! descriptor set that reflection serves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("segd.v1");

/// Encoded `FileDescriptorSet` of everything in `proto/`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/segd_descriptor.bin"));
