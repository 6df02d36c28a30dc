//! The one access check in front of a gRPC service.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::{ClusterSecret, Verifier};

/// Who may call a gRPC service.
#[derive(Debug, Clone)]
pub enum Access {
    /// Anyone who can reach the port (auth off; the process says so at start).
    Open,
    /// Only the cluster's own services, with the cluster secret (signaling: `NodeStream`, `Resume`, ...).
    Internal(ClusterSecret),
    /// The cluster's services, or a developer with an access token holding the `admin` grant
    /// (registry, recorder).
    Public {
        /// What internal callers present (none: internal callers need an admin token too).
        cluster: Option<ClusterSecret>,
        /// Checks developers' tokens.
        tokens: Arc<Verifier>,
    },
}

/// Who made a call that passed an [`Access`] check; [`Guarded`] puts it in the request's extensions
/// (`request.extensions().get::<Caller>()`), for per-caller quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody in particular: the API is open (auth off).
    Anyone,
    /// One of the cluster's own services (it presented the cluster secret).
    Cluster,
    /// A developer: the subject of the admin token presented.
    Subject(String),
}

impl Access {
    /// The policy for a public API: open without a token verifier (auth off).
    pub fn public(cluster: Option<ClusterSecret>, tokens: Option<Arc<Verifier>>) -> Self {
        match tokens {
            Some(tokens) => Self::Public { cluster, tokens },
            None => Self::Open,
        }
    }

    /// The policy for an internal API: open without a cluster secret.
    pub fn internal(cluster: Option<ClusterSecret>) -> Self {
        cluster.map_or(Self::Open, Self::Internal)
    }

    /// Who is calling, if a call with these headers may proceed; else the status to answer with.
    pub fn check(&self, service: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let bearer = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::bearer);
        match self {
            Self::Open => Ok(Caller::Anyone),
            Self::Internal(secret) => match bearer {
                Some(b) if secret.matches(b) => Ok(Caller::Cluster),
                Some(_) => Err(Status::unauthenticated(format!(
                    "{service} is internal to the onair cluster and the credentials sent are not its cluster secret"
                ))),
                None => Err(Status::unauthenticated(format!(
                    "{service} is internal to the onair cluster: calls need `authorization: Bearer <cluster secret>` \
                     (--cluster-secret)"
                ))),
            },
            Self::Public { cluster, tokens } => {
                let Some(b) = bearer else {
                    return Err(Status::unauthenticated(format!(
                        "{service} needs `authorization: Bearer <access token>` with the admin grant \
                         (mint one with `onair token --grant admin`)"
                    )));
                };
                if cluster.as_ref().is_some_and(|c| c.matches(b)) {
                    return Ok(Caller::Cluster);
                }
                match tokens.verify(b) {
                    Ok(claims) if claims.grants.admin => {
                        tracing::debug!(service, subject = %claims.sub, "admin call");
                        Ok(Caller::Subject(claims.sub))
                    }
                    Ok(_) => Err(Status::permission_denied(format!(
                        "this access token has no admin grant, which {service} needs"
                    ))),
                    Err(e) => Err(Status::unauthenticated(e.to_string())),
                }
            }
        }
    }
}

/// A gRPC service behind an [`Access`] check. Only the service itself is guarded: health and
/// reflection on the same port stay open (probes, tooling).
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S> Guarded<S> {
    /// Puts `inner` behind `access`.
    pub fn new(inner: S, access: Access) -> Self {
        Self { inner, access: Arc::new(access) }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible> + NamedService,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<http::Response<Body>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.access.check(S::NAME, req.headers()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Either::Right(self.inner.call(req))
            }
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{Grants, Minter};

    const SECRET: &str = "auth-secret-for-the-tests";

    fn headers(bearer: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(b) = bearer {
            h.insert(http::header::AUTHORIZATION, format!("Bearer {b}").parse().unwrap());
        }
        h
    }

    #[test]
    fn internal_apis_take_only_the_cluster_secret() {
        let cluster = ClusterSecret::new("cluster-secret-0123").unwrap();
        let access = Access::internal(Some(cluster));
        assert_eq!(access.check("S", &headers(Some("cluster-secret-0123"))).unwrap(), Caller::Cluster);
        let missing = access.check("S", &headers(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("internal to the onair cluster"), "{}", missing.message());
        assert_eq!(access.check("S", &headers(Some("guess"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        // Even an admin token does not open an internal API.
        let admin = Minter::hs256(SECRET).unwrap().mint(
            "dev",
            Grants { admin: true, ..Grants::default() },
            Duration::from_secs(60),
            SystemTime::now(),
        );
        assert!(access.check("S", &headers(Some(&admin.unwrap()))).is_err());
        assert!(Access::internal(None).check("S", &headers(None)).is_ok(), "no secret: open");
    }

    #[test]
    fn public_apis_take_an_admin_token_or_the_cluster_secret() {
        let cluster = ClusterSecret::new("cluster-secret-0123").unwrap();
        let tokens = Arc::new(Verifier::hs256(SECRET).unwrap());
        let access = Access::public(Some(cluster), Some(tokens));
        let minter = Minter::hs256(SECRET).unwrap();
        let mint = |g: Grants| minter.mint("dev", g, Duration::from_secs(60), SystemTime::now()).unwrap();
        let admin = access.check("R", &headers(Some(&mint(Grants { admin: true, ..Grants::default() }))));
        assert_eq!(admin.unwrap(), Caller::Subject("dev".into()));
        assert_eq!(access.check("R", &headers(Some("cluster-secret-0123"))).unwrap(), Caller::Cluster);
        let not_admin = access.check("R", &headers(Some(&mint(Grants { admin: false, ..Grants::all() })))).unwrap_err();
        assert_eq!(not_admin.code(), tonic::Code::PermissionDenied);
        assert!(not_admin.message().contains("no admin grant"));
        let none = access.check("R", &headers(None)).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(none.message().contains("onair token --grant admin"), "{}", none.message());
        let forged = access.check("R", &headers(Some("eyJhbGciOiJIUzI1NiJ9.e30.c2ln"))).unwrap_err();
        assert_eq!(forged.code(), tonic::Code::Unauthenticated);
        assert_eq!(Access::public(None, None).check("R", &headers(None)).unwrap(), Caller::Anyone, "auth off: open");
    }
}
