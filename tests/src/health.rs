//! A hand-rolled `grpc.health.v1` client (the tests crate does not depend on tonic-health).

use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `grpc.health.v1.Health/Check` over one channel.
#[derive(Clone)]
pub struct HealthClient {
    inner: tonic::client::Grpc<Channel>,
}

impl HealthClient {
    /// A client on `channel`.
    pub fn new(channel: Channel) -> Self {
        Self { inner: tonic::client::Grpc::new(channel) }
    }

    /// The serving status of `service` ("" for the whole server): 1 is SERVING, 2 NOT_SERVING.
    pub async fn check(&mut self, service: &str) -> Result<i32, tonic::Status> {
        self.inner.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let req = tonic::Request::new(HealthCheckRequest { service: service.into() });
        Ok(self.inner.unary(req, path, codec).await?.into_inner().status)
    }
}
