//! The rustls verifiers of the mTLS hop. Both run [`verify_peer`] against
//! the bundles the credential store holds at that handshake, and delegate
//! handshake signatures to rustls' real implementation. The outbound
//! verifier also requires the exact SPIFFE ID expected for the destination.

use super::creds::CredentialStore;
use super::verify::{verify_peer, VerifyError};
use crate::sidecar::identity::{Role, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// The checks shared by both directions.
#[derive(Debug)]
struct SvidChecker {
    store: Arc<CredentialStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SvidChecker {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<SpiffeId, VerifyError> {
        verify_peer(
            &self.store.bundles(),
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            role,
        )
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
}

/// Handshake signatures are checked by rustls' own implementation, with
/// the algorithms of our one crypto provider; only certificates are ours.
macro_rules! delegate_handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.checker.tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.checker.tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.checker.algorithms.supported_schemes()
        }
    };
}

/// Verifies callers at the inbound listener.
#[derive(Debug)]
pub struct InboundVerifier {
    checker: SvidChecker,
}

impl InboundVerifier {
    pub fn new(store: Arc<CredentialStore>, provider: &CryptoProvider) -> Self {
        InboundVerifier {
            checker: SvidChecker {
                store,
                algorithms: provider.signature_verification_algorithms,
            },
        }
    }
}

impl ClientCertVerifier for InboundVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a sidecar has exactly one SVID to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.checker
            .verify(end_entity, intermediates, now, Role::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    delegate_handshake_signatures!();
}

/// Verifies the peer sidecar we connect to for one outbound destination.
#[derive(Debug)]
pub struct OutboundVerifier {
    checker: SvidChecker,
    expected: SpiffeId,
}

impl OutboundVerifier {
    pub fn new(store: Arc<CredentialStore>, expected: SpiffeId, provider: &CryptoProvider) -> Self {
        OutboundVerifier {
            checker: SvidChecker {
                store,
                algorithms: provider.signature_verification_algorithms,
            },
            expected,
        }
    }
}

impl ServerCertVerifier for OutboundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = self
            .checker
            .verify(end_entity, intermediates, now, Role::Server)?;
        if actual != self.expected {
            return Err(VerifyError::WrongIdentity {
                expected: self.expected.clone(),
                actual,
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    delegate_handshake_signatures!();
}
