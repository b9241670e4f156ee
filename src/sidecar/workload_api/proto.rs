//! The SPIFFE Workload API messages this client uses, written by hand as
//! prost types (there is no `protoc` in the build). Field numbers and types
//! follow the public `workload.proto` (spiffe/go-spiffe,
//! `proto/spiffe/workload/workload.proto`); `tests.rs` pins them against
//! wire bytes encoded by hand from that file. The service has no proto
//! package, so its methods are `/SpiffeWorkloadAPI/<Method>`.
//!
//! Public so that a test can play the agent with the very same messages.

use std::collections::HashMap;

/// The service name as it appears in method paths.
pub const SERVICE: &str = "SpiffeWorkloadAPI";
pub const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
pub const FETCH_X509_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchX509Bundles";
pub const FETCH_JWT_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchJWTBundles";

/// The metadata every Workload API call must carry: agents refuse calls
/// without it (a guard against server-side request forgery through proxies).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
pub const SECURITY_HEADER_VALUE: &str = "true";

/// `X509SVIDRequest`: no parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

/// `X509SVIDResponse`: every message is the full current state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    /// The SVIDs the workload is entitled to.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    /// DER CRLs (not used: SPIFFE relies on short-lived SVIDs).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// Bundles of foreign trust domains, keyed by trust domain SPIFFE ID,
    /// each the DER certificates concatenated.
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID`: one SVID, its key and its trust domain's bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// DER certificates concatenated, leaf first.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// DER PKCS#8 private key, unencrypted.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// DER certificates of the SVID's own trust domain, concatenated.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    /// Operator-chosen guidance when several SVIDs are returned.
    #[prost(string, tag = "5")]
    pub hint: String,
}

/// `X509BundlesRequest`: no parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesRequest {}

/// `X509BundlesResponse`: every trust domain the workload should trust
/// (its own included).
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "2")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// `JWTBundlesRequest`: no parameters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesRequest {}

/// `JWTBundlesResponse`: JWKS documents keyed by trust domain SPIFFE ID.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesResponse {
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}
